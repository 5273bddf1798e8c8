"""RESP2, the Redis protocol, sans I/O: commands to bytes, bytes to replies. No trio.

::

    data = encode_command("PUBLISH", channel, payload)
    parser = RespParser()
    parser.feed(received)                 # b"" means EOF
    while (reply := parser.next()) is not NEED_DATA: ...

Replies are ``bytes`` (bulk strings), ``str`` (simple strings), ``int``, ``None``
(nil), ``list`` (arrays) or :class:`RespError` (an error reply, returned, not
raised: it answers one command and the connection goes on). A reply that breaks
the protocol, or a bulk string or array beyond the caps, raises
:class:`RespProtocolError`, and the parser stays broken (the caller closes the
connection). The caps are far above what the hub sends: a hub message is at most
a packet (64 KiB) and its names.
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

__all__ = [
    "MAX_ARRAY",
    "MAX_BULK",
    "NEED_DATA",
    "Reply",
    "RespError",
    "RespParser",
    "RespProtocolError",
    "encode_command",
]

#: Largest bulk string accepted from the server.
MAX_BULK: Final = 64 << 20
#: Most elements accepted in one array.
MAX_ARRAY: Final = 1 << 20
_MAX_LINE: Final = 1 << 16


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


class RespError(str):
    """An error reply (``-ERR ...``): the server refused one command."""


class RespProtocolError(ValueError):
    """The server's bytes are not RESP (or exceed the caps): close the connection."""


#: A reply; an array's items are replies too.
Reply: TypeAlias = bytes | str | int | list[Any] | RespError | None


def _arg(value: bytes | str | int) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode()
    raise TypeError(f"a Redis argument is bytes, str or int, got {value!r}")


def encode_command(*args: bytes | str | int) -> bytes:
    """One command as a RESP array of bulk strings."""
    if not args:
        raise ValueError("a Redis command needs at least its name")
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = _arg(arg)
        parts.append(b"$%d\r\n" % len(raw))
        parts.append(raw)
        parts.append(b"\r\n")
    return b"".join(parts)


class RespParser:
    """Replies from a stream of bytes (see the module docstring)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._pos = 0
        self._eof = False
        self._broken: RespProtocolError | None = None

    def feed(self, data: bytes) -> None:
        if not data:
            self._eof = True
            return
        if self._pos:
            self._buffer = self._buffer[self._pos :]
            self._pos = 0
        self._buffer = self._buffer + data if self._buffer else data

    @property
    def at_eof(self) -> bool:
        """True once EOF was fed and every whole reply taken."""
        return self._eof and self._pos >= len(self._buffer)

    def next(self) -> Reply | _NeedData:
        """The next whole reply, or NEED_DATA."""
        if self._broken is not None:
            raise self._broken
        try:
            reply, pos = self._parse(self._pos)
        except _Short:
            if self._eof and self._pos < len(self._buffer):
                self._broken = RespProtocolError("the connection closed in the middle of a reply")
                raise self._broken from None
            return NEED_DATA
        except RespProtocolError as exc:
            self._broken = exc
            raise
        self._pos = pos
        return reply

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self._buffer.find(b"\r\n", pos)
        if end < 0:
            if len(self._buffer) - pos > _MAX_LINE:
                raise RespProtocolError("a RESP line longer than 64 KiB")
            raise _Short
        return self._buffer[pos:end], end + 2

    def _int(self, raw: bytes) -> int:
        try:
            return int(raw)
        except ValueError:
            raise RespProtocolError(f"a RESP number that is not one: {raw[:40]!r}") from None

    def _parse(self, pos: int) -> tuple[Reply, int]:
        if pos >= len(self._buffer):
            raise _Short
        kind = self._buffer[pos : pos + 1]
        line, pos = self._line(pos + 1)
        if kind == b"+":
            return line.decode("utf-8", "replace"), pos
        if kind == b"-":
            return RespError(line.decode("utf-8", "replace")), pos
        if kind == b":":
            return self._int(line), pos
        if kind == b"$":
            size = self._int(line)
            if size == -1:
                return None, pos
            if not 0 <= size <= MAX_BULK:
                raise RespProtocolError(f"a RESP bulk string of {size} bytes")
            end = pos + size
            if end + 2 > len(self._buffer):
                raise _Short
            if self._buffer[end : end + 2] != b"\r\n":
                raise RespProtocolError("a RESP bulk string without its CRLF")
            return self._buffer[pos:end], end + 2
        if kind == b"*":
            count = self._int(line)
            if count == -1:
                return None, pos
            if not 0 <= count <= MAX_ARRAY:
                raise RespProtocolError(f"a RESP array of {count} elements")
            items: list[Reply] = []
            for _ in range(count):
                item, pos = self._parse(pos)
                items.append(item)
            return items, pos
        raise RespProtocolError(f"unknown RESP type byte {kind!r}")


class _Short(Exception):
    """Not enough bytes yet for a whole reply."""
