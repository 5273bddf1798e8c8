"""The replies both baseline servers send, precomputed (shared, so they answer alike).

Replies have the sizes and codes of docs/protocol.md with a correct CRC; their bodies are
fixed (all zero: result code 0, empty username) because a baseline is a ceiling, not
an account server.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

HEADER: Final = struct.Struct(">HHI")
MAX_PACKET: Final = 29000
PING: Final = b"\x00\x08\x00\x00\x00\x00\x00\x00"


def packet(code: int, body: bytes) -> bytes:
    """A whole packet: header (length, code, CRC-32 of the body) and body."""
    crc = zlib.crc32(body) if body else 0
    return HEADER.pack(8 + len(body), code, crc) + body


REGISTER_REPLY: Final = packet(5, bytes(100))
LOGIN_REPLY: Final = packet(6, bytes(96))
