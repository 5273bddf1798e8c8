"""What hubs tell each other: the messages of the mesh and the bus, as bytes. No I/O.

Every message is one kind byte and its fields: strings as a u16 length and
UTF-8, lists as a u16 count, the packet to deliver as the rest of the message
(it is already encoded, and is passed on as it is)::

    GROUP   group, exclude [connection id], packet
    USER    name, packet
    CONN    connection id, packet
    ASK     request id (u32), asking worker (u16), group
    ANSWER  request id (u32), answering worker (u16), u32 count,
            [connection id, user ("" = none)]

A message that does not parse raises :class:`HubWireError`: the sender is a
server of ours, so it is a bug or a stranger on the socket, and the link is closed.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Sequence
from typing import Final

import attrs

__all__ = [
    "Answer",
    "Ask",
    "HubWireError",
    "ToConnection",
    "ToGroup",
    "ToUser",
    "decode",
    "encode_answer",
    "encode_ask",
    "encode_connection",
    "encode_group",
    "encode_user",
]

GROUP: Final = 1
USER: Final = 2
CONN: Final = 3
ASK: Final = 4
ANSWER: Final = 5

_U16: Final = struct.Struct(">H")
_ASK: Final = struct.Struct(">BIH")
_ANSWER: Final = struct.Struct(">BIHI")


class HubWireError(ValueError):
    """A hub message that does not parse (see the module docstring)."""


@attrs.frozen
class ToGroup:
    group: str
    exclude: frozenset[str]
    packet: bytes


@attrs.frozen
class ToUser:
    name: str
    packet: bytes


@attrs.frozen
class ToConnection:
    connection_id: str
    packet: bytes


@attrs.frozen
class Ask:
    request: int
    worker: int
    group: str


@attrs.frozen
class Answer:
    request: int
    worker: int
    members: tuple[tuple[str, str | None], ...]


Message = ToGroup | ToUser | ToConnection | Ask | Answer


def _str(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 0xFFFF:
        raise ValueError(f"a hub name is at most 65535 bytes, got {len(raw)}: {text[:40]!r}...")
    return _U16.pack(len(raw)) + raw


def encode_group(group: str, packet: bytes, exclude: Collection[str] = ()) -> bytes:
    if len(exclude) > 0xFFFF:
        raise ValueError(f"exclude holds at most 65535 ids, got {len(exclude)}")
    ids = b"".join(_str(i) for i in exclude)
    return b"".join((bytes((GROUP,)), _str(group), _U16.pack(len(exclude)), ids, packet))


def encode_user(name: str, packet: bytes) -> bytes:
    return b"".join((bytes((USER,)), _str(name), packet))


def encode_connection(connection_id: str, packet: bytes) -> bytes:
    return b"".join((bytes((CONN,)), _str(connection_id), packet))


def encode_ask(request: int, worker: int, group: str) -> bytes:
    return _ASK.pack(ASK, request, worker) + _str(group)


def encode_answer(request: int, worker: int, members: Sequence[tuple[str, str | None]]) -> bytes:
    parts = [_ANSWER.pack(ANSWER, request, worker, len(members))]
    for connection_id, user in members:
        parts.append(_str(connection_id))
        parts.append(_str(user or ""))
    return b"".join(parts)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def u16(self) -> int:
        end = self.pos + 2
        if end > len(self.data):
            raise HubWireError("hub message cut short")
        (value,) = _U16.unpack_from(self.data, self.pos)
        self.pos = end
        return int(value)

    def str(self) -> str:
        size = self.u16()
        end = self.pos + size
        if end > len(self.data):
            raise HubWireError("hub message cut short in a name")
        try:
            text = self.data[self.pos : end].decode()
        except UnicodeDecodeError:
            raise HubWireError("a name in a hub message is not UTF-8") from None
        self.pos = end
        return text

    def rest(self) -> bytes:
        return self.data[self.pos :]


def decode(data: bytes) -> Message:
    """One message from its bytes (``HubWireError`` if they are not one)."""
    if not data:
        raise HubWireError("empty hub message")
    kind = data[0]
    if kind == GROUP:
        r = _Reader(data, 1)
        group = r.str()
        exclude = frozenset(r.str() for _ in range(r.u16()))
        return ToGroup(group, exclude, r.rest())
    if kind == USER:
        r = _Reader(data, 1)
        return ToUser(r.str(), r.rest())
    if kind == CONN:
        r = _Reader(data, 1)
        return ToConnection(r.str(), r.rest())
    if kind == ASK:
        if len(data) < _ASK.size:
            raise HubWireError("hub ASK cut short")
        _, request, worker = _ASK.unpack_from(data)
        r = _Reader(data, _ASK.size)
        return Ask(request, worker, r.str())
    if kind == ANSWER:
        if len(data) < _ANSWER.size:
            raise HubWireError("hub ANSWER cut short")
        _, request, worker, count = _ANSWER.unpack_from(data)
        r = _Reader(data, _ANSWER.size)
        members = []
        if count > len(data):  # each member takes at least 4 bytes
            raise HubWireError(f"hub ANSWER claims {count} members in {len(data)} bytes")
        for _ in range(count):
            connection_id = r.str()
            user = r.str()
            members.append((connection_id, user or None))
        return Answer(request, worker, tuple(members))
    raise HubWireError(f"unknown hub message kind {kind}")
