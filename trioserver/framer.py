"""Sans-I/O framing for the course's binary protocol (docs/protocol.md, "Framing").

Every packet is an 8-byte big-endian header ``pkgLen u16, msgCode u16, crc32 u32``
followed by the body. The CRC is ``zlib.crc32(body)`` and must be 0 for an empty body.

This module imports neither trio nor socket; it is shaped like h11's ``Connection``::

    decoder = FrameDecoder()
    decoder.receive_data(chunk)          # b"" means the peer sent EOF
    while (event := decoder.next_packet()) is not NEED_DATA:
        ...                              # a Packet or a Discarded

``next_packets(limit)`` is the batch form the worker's reader uses: one call per
receive returns every event the bytes completed, at most ``limit`` (the room
left in the connection's inbox; the rest stays buffered as bytes).
``receive_packets(data)`` buffers and returns every event at once.

A ``Discarded`` event is a packet that was framed correctly but must be dropped
(bad CRC): the stream stays in sync, so the connection stays usable. A length
outside ``8..max_packet_length`` cannot be resynchronised (the original skipped
8 bytes and then ran the rest of the stream as commands), so it raises
``PacketLengthError`` and the decoder stays broken from then on.
"""

from __future__ import annotations

import enum
import struct
import zlib
from typing import Final

import attrs

from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_PACKET_LENGTH",
    "HEADER",
    "HEADER_SIZE",
    "NEED_DATA",
    "PING",
    "DiscardReason",
    "Discarded",
    "FrameDecoder",
    "LocalProtocolError",
    "NeedData",
    "Packet",
    "PacketLengthError",
    "ProtocolError",
    "RemoteProtocolError",
    "TruncatedPacketError",
    "encode",
    "encode_header",
]

HEADER: Final = struct.Struct(">HHI")
HEADER_SIZE: Final = HEADER.size  # 8
#: The original's 30000-byte maximum minus its 1000-byte margin (docs/protocol.md).
DEFAULT_MAX_PACKET_LENGTH: Final = 29000
#: pkgLen is a u16, so no setting may exceed this.
ABSOLUTE_MAX_PACKET_LENGTH: Final = 0xFFFF

_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack
_crc32 = zlib.crc32


class PacketLengthError(RemoteProtocolError):
    """A header announced a pkgLen outside ``8..max``: the stream cannot be resynchronised."""

    def __init__(self, length: int, maximum: int) -> None:
        super().__init__(
            f"peer sent a header with pkgLen={length}, outside the allowed 8..{maximum}; "
            "closing, since the rest of the stream cannot be framed"
        )
        self.length = length
        self.maximum = maximum


class TruncatedPacketError(RemoteProtocolError):
    """The peer closed its write side in the middle of a packet."""

    def __init__(self, pending: int) -> None:
        super().__init__(f"peer sent EOF with {pending} bytes of an unfinished packet buffered")
        self.pending = pending


class NeedData(enum.Enum):
    """The type of the :data:`NEED_DATA` sentinel."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


class DiscardReason(enum.Enum):
    """Why a well-framed packet is dropped without a reply (docs/protocol.md, "Rules")."""

    BAD_CRC = "bad_crc"
    CRC_ON_EMPTY_BODY = "crc_on_empty_body"


@attrs.define(slots=True)
class Packet:
    """One complete, CRC-checked packet. Treat it as a value.

    Not ``frozen``: a frozen attrs ``__init__`` sets each field through
    ``object.__setattr__``, which costs about 0.4 µs more for every packet the
    worker decodes (measured), a few percent of a ping's whole cost.
    """

    code: int
    body: bytes = b""


@attrs.frozen(slots=True)
class Discarded:
    """A well-framed packet that failed its CRC check; the stream is still in sync."""

    code: int
    reason: DiscardReason
    length: int


Event = Packet | Discarded


def encode_header(code: int, body: bytes | bytearray | memoryview = b"") -> bytes:
    """The 8-byte header for ``body`` (useful to send header and body separately)."""
    length = HEADER_SIZE + len(body)
    if length > ABSOLUTE_MAX_PACKET_LENGTH:
        raise LocalProtocolError(
            f"body of {len(body)} bytes does not fit a packet (pkgLen is a u16, "
            f"so a body holds at most {ABSOLUTE_MAX_PACKET_LENGTH - HEADER_SIZE} bytes)"
        )
    if not 0 <= code <= 0xFFFF:
        raise LocalProtocolError(f"message code {code!r} is not a u16")
    return _pack_header(length, code, _crc32(body) if body else 0)


def encode(code: int, body: bytes | bytearray | memoryview = b"") -> bytes:
    """One packet: header plus body, ready to send."""
    return encode_header(code, body) + bytes(body)


#: The ping packet and its reply: ``0008 0000 00000000``.
PING: Final = encode(0)


class FrameDecoder:
    """Incremental decoder: bytes in, :class:`Packet` / :class:`Discarded` events out.

    ``max_packet_length`` caps pkgLen (header included); it is also the most this
    object ever buffers beyond what one ``receive_data`` call hands it.

    With nothing buffered, a received ``bytes`` chunk is decoded where it is (no
    copy) and nothing is kept once it is all taken: an idle connection's decoder
    holds no buffer. Only the start of a packet that the chunk left unfinished is
    copied (into a ``bytearray`` that the next chunks extend), so a parked
    connection never keeps a whole large read alive.
    """

    __slots__ = ("_buf", "_eof", "_error", "_max", "_pos")

    def __init__(self, max_packet_length: int = DEFAULT_MAX_PACKET_LENGTH) -> None:
        if not HEADER_SIZE <= max_packet_length <= ABSOLUTE_MAX_PACKET_LENGTH:
            raise ValueError(
                f"max_packet_length={max_packet_length!r} must be in "
                f"{HEADER_SIZE}..{ABSOLUTE_MAX_PACKET_LENGTH}"
            )
        self._max = max_packet_length
        #: ``b""`` when nothing is buffered; a received chunk; or a growing bytearray.
        self._buf: bytes | bytearray = b""
        self._pos = 0  # start of unconsumed bytes in _buf
        self._eof = False
        self._error: RemoteProtocolError | None = None

    @property
    def max_packet_length(self) -> int:
        return self._max

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a whole packet."""
        return len(self._buf) - self._pos

    def buffered(self) -> bytes:
        """The bytes buffered and not yet taken as events: a packet not yet whole, and
        whole ones a ``limit`` left as bytes (what a handoff carries to a new decoder)."""
        return bytes(self._buf[self._pos :])

    @property
    def they_are_done(self) -> bool:
        """True once EOF was received and every whole packet has been taken."""
        return self._eof and self.pending == 0

    @property
    def error(self) -> RemoteProtocolError | None:
        """The sticky error, once the peer broke the framing."""
        return self._error

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the peer; ``b""`` means EOF."""
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data() called with data after EOF")
            return
        if not data:
            self._eof = True
            return
        buf = self._buf
        if not buf:  # nothing buffered: decode the chunk where it is
            self._buf = data if type(data) is bytes else bytes(data)
            return
        if isinstance(buf, bytearray):
            if self._pos > 65536 or self._pos * 2 > len(buf):
                # Compact lazily: only once the consumed prefix is most of the buffer.
                del buf[: self._pos]
                self._pos = 0
        else:  # a chunk with more in it: its rest becomes a buffer
            buf = self._buf = bytearray(memoryview(buf)[self._pos :])
            self._pos = 0
        buf += data

    def next_packet(self) -> Event | NeedData:
        """The next event, or :data:`NEED_DATA` when more bytes are needed.

        Raises :class:`PacketLengthError` (and forever after, the same error) when
        the peer sent an impossible length, and :class:`TruncatedPacketError` at
        EOF in the middle of a packet.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail >= HEADER_SIZE:
            length, code, crc = _unpack_header(buf, pos)
            if length < HEADER_SIZE or length > self._max:
                self._error = PacketLengthError(length, self._max)
                raise self._error
            if avail >= length:
                self._pos = pos + length
                if length == HEADER_SIZE:
                    if crc:
                        return Discarded(code, DiscardReason.CRC_ON_EMPTY_BODY, length)
                    return Packet(code, b"")
                body = bytes(buf[pos + HEADER_SIZE : pos + length])
                if _crc32(body) != crc:
                    return Discarded(code, DiscardReason.BAD_CRC, length)
                return Packet(code, body)
        if self._eof and avail:
            self._error = TruncatedPacketError(avail)
            raise self._error
        if not avail:
            self._buf = b""  # all taken: an idle connection keeps no buffer
            self._pos = 0
        elif pos and type(buf) is bytes:
            self._buf = buf[pos:]  # keep the unfinished packet, not the whole chunk
            self._pos = 0
        return NEED_DATA

    def next_packets(self, limit: int | None = None) -> list[Event]:
        """Up to ``limit`` events from what is buffered (the reader's batch form).

        The limit lets a reader take no more packets than its inbox has room for
        and leave the rest as bytes, which are far smaller than decoded packets.
        On a framing error the events decoded before it are returned, so they can
        still be answered; the error is raised by the next call (it is sticky).
        """
        # next_packet's loop, inline: one call per batch instead of one per packet.
        out: list[Event] = []
        if self._error is not None:
            raise self._error
        append = out.append
        buf = self._buf
        pos = self._pos
        end = len(buf)
        maximum = self._max
        remaining = -1 if limit is None else limit
        while remaining and end - pos >= HEADER_SIZE:
            length, code, crc = _unpack_header(buf, pos)
            if length < HEADER_SIZE or length > maximum:
                self._error = PacketLengthError(length, maximum)
                break
            if end - pos < length:
                break
            if length == HEADER_SIZE:
                if crc:
                    append(Discarded(code, DiscardReason.CRC_ON_EMPTY_BODY, length))
                else:
                    append(Packet(code, b""))
            else:
                body = bytes(buf[pos + HEADER_SIZE : pos + length])
                if _crc32(body) != crc:
                    append(Discarded(code, DiscardReason.BAD_CRC, length))
                else:
                    append(Packet(code, body))
            pos += length
            remaining -= 1
        self._pos = pos
        if self._error is not None:
            if out:
                return out  # the error is raised by the next call
            raise self._error
        if pos == end:
            self._buf = b""  # all taken: an idle connection keeps no buffer
            self._pos = 0
        elif self._eof and remaining:
            self._error = TruncatedPacketError(end - pos)
            if not out:
                raise self._error
        elif remaining and pos and type(buf) is bytes:
            self._buf = buf[pos:]  # keep the unfinished packet, not the whole chunk
            self._pos = 0
        return out

    def receive_packets(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Buffer ``data`` and return every event it completed (raises at a framing error)."""
        self.receive_data(data)
        out: list[Event] = []
        while (event := self.next_packet()) is not NEED_DATA:
            out.append(event)
        return out
