"""One binary connection's state as data: what a worker hands another with the socket.

A reload can give a live connection to a new worker (the socket over SCM_RIGHTS,
this record beside it) only if everything the old worker knew about it travels
too. The record is pure: no socket, no clock. Times are *remaining* seconds,
since the two processes' monotonic clocks agree but the record may wait in
between; the receiver adds them to its own ``now``.

Wire form: a 4-byte big-endian length, a UTF-8 JSON header of that length, then
the partial packet bytes, the unsent reply bytes, the pickled application state
and a WebSocket's raw frame bytes, whose lengths the header gives. Version 2 adds
the hard deadline, the login rule, the application state and the WebSocket
fields; a version-1 record still decodes (with their defaults), so a new worker
reads what an older one sends during an upgrade.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, Final

import attrs

from .peer import Peer

__all__ = ["ConnectionRecord", "HandoffRecordError"]

_LENGTH: Final = struct.Struct(">I")
#: A header bigger than this is not a record (groups and ids are short).
MAX_HEADER: Final = 1 << 20
VERSION: Final = 2
#: The versions :meth:`ConnectionRecord.decode` reads.
READABLE: Final = frozenset({1, 2})


class HandoffRecordError(ValueError):
    """The bytes are not a connection record this version can read."""


def _remaining(value: float) -> float | None:
    return None if math.isinf(value) else value


@attrs.frozen
class ConnectionRecord:
    """What a binary connection is, apart from its socket."""

    #: The connection id clients and logs know it by (kept across the move).
    connection_id: str
    peer: Peer
    #: The logged-in user, if any.
    user: str | None = None
    #: Seconds until the heartbeat deadline (inf: none).
    heartbeat_remaining: float = math.inf
    #: The flood rule's counter and the seconds since the packet that last moved it.
    flood_count: int = 0
    since_last_packet: float = math.inf
    #: Bytes received but not yet a whole packet (a half-sent header, say).
    partial: bytes = b""
    #: Encoded replies not yet written to the socket, in order.
    unsent: bytes = b""
    #: The hub groups the connection is a member of.
    groups: tuple[str, ...] = ()
    #: Seconds until the hard deadline (session lifetime, or login deadline while
    #: ``prelogin``); inf: none.
    hard_remaining: float = math.inf
    prelogin: bool = False
    #: ``ctx.state`` pickled (None: the application kept none, or it did not pickle).
    state: bytes | None = None
    #: The old worker ran the application's ``on_close`` (its state could not move):
    #: the new one runs ``on_connect``.
    reannounce: bool = False
    #: A WebSocket connection: its subprotocol, and the raw bytes of a frame still
    #: arriving (``partial`` then holds unframed payload).
    websocket: bool = False
    subprotocol: str | None = None
    frames: bytes = b""

    def heartbeat_deadline(self, now: float) -> float:
        """The deadline on the receiver's clock."""
        return now + self.heartbeat_remaining

    def encode(self) -> bytes:
        header = json.dumps(
            {
                "v": VERSION,
                "id": self.connection_id,
                "host": self.peer.host,
                "port": self.peer.port,
                "user": self.user,
                "heartbeat": _remaining(self.heartbeat_remaining),
                "flood": self.flood_count,
                "since": _remaining(self.since_last_packet),
                "partial": len(self.partial),
                "unsent": len(self.unsent),
                "groups": list(self.groups),
                "hard": _remaining(self.hard_remaining),
                "prelogin": self.prelogin,
                "state": None if self.state is None else len(self.state),
                "reannounce": self.reannounce,
                "ws": {"sub": self.subprotocol, "frames": len(self.frames)}
                if self.websocket
                else None,
            },
            separators=(",", ":"),
        ).encode()
        state = self.state or b""
        return _LENGTH.pack(len(header)) + header + self.partial + self.unsent + state + self.frames

    @classmethod
    def decode(cls, data: bytes) -> ConnectionRecord:
        """The record in ``data`` (exactly one); HandoffRecordError if it is not one."""
        if len(data) < _LENGTH.size:
            raise HandoffRecordError("truncated: no header length")
        (size,) = _LENGTH.unpack_from(data)
        if size > MAX_HEADER or _LENGTH.size + size > len(data):
            raise HandoffRecordError(f"header of {size} bytes does not fit in {len(data)}")
        try:
            header = json.loads(data[_LENGTH.size : _LENGTH.size + size])
        except ValueError as exc:
            raise HandoffRecordError(f"header is not JSON: {exc}") from None
        if not isinstance(header, dict) or header.get("v") not in READABLE:
            raise HandoffRecordError(f"not a record of version {sorted(READABLE)}")
        body = data[_LENGTH.size + size :]
        partial_len = _count(header, "partial")
        unsent_len = _count(header, "unsent")
        state_len = None if header.get("state") is None else _count(header, "state")
        ws = header.get("ws")
        if ws is not None and not isinstance(ws, dict):
            raise HandoffRecordError(f"ws must be an object, not {ws!r}")
        frames_len = 0 if ws is None else _count(ws, "frames")
        lengths = (partial_len, unsent_len, state_len or 0, frames_len)
        if sum(lengths) != len(body):
            raise HandoffRecordError(
                f"body is {len(body)} bytes, the header says {' + '.join(map(str, lengths))}"
            )
        at = partial_len + unsent_len
        end = at + (state_len or 0)
        groups = header.get("groups")
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise HandoffRecordError("groups must be a list of strings")
        port = header.get("port")
        if port is not None and (type(port) is not int or not 0 <= port <= 65535):
            raise HandoffRecordError(f"bad port {port!r}")
        return cls(
            connection_id=_text(header, "id"),
            peer=Peer(_text(header, "host"), port),
            user=_text(header, "user", optional=True),
            heartbeat_remaining=_seconds(header, "heartbeat"),
            flood_count=_count(header, "flood"),
            since_last_packet=_seconds(header, "since"),
            partial=body[:partial_len],
            unsent=body[partial_len:at],
            groups=tuple(groups),
            hard_remaining=_seconds(header, "hard"),
            prelogin=_flag(header, "prelogin"),
            state=None if state_len is None else body[at:end],
            reannounce=_flag(header, "reannounce"),
            websocket=ws is not None,
            subprotocol=None if ws is None else _text(ws, "sub", optional=True),
            frames=body[end:],
        )


def _count(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if type(value) is not int or value < 0:
        raise HandoffRecordError(f"{key} must be a count, not {value!r}")
    return value


def _seconds(header: dict[str, Any], key: str) -> float:
    value = header.get(key)
    if value is None:
        return math.inf
    if type(value) not in (int, float) or not math.isfinite(value):
        raise HandoffRecordError(f"{key} must be seconds, not {value!r}")
    return float(value)


def _flag(header: dict[str, Any], key: str) -> bool:
    value = header.get(key, False)
    if type(value) is not bool:
        raise HandoffRecordError(f"{key} must be true or false, not {value!r}")
    return value


def _text(header: dict[str, Any], key: str, *, optional: bool = False) -> Any:
    value = header.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise HandoffRecordError(f"{key} must be a string, not {value!r}")
    return value
