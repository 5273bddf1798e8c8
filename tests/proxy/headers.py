"""PROXY headers built by hand for tests (the parser must not be used to make its own input)."""

from __future__ import annotations

import ipaddress
import struct

from trioserver.proxy_protocol import V2_SIGNATURE


def v2_header(ver_cmd: int, fam: int, body: bytes) -> bytes:
    """Signature, the two command/family bytes, the length, then ``body`` as given."""
    return V2_SIGNATURE + bytes([ver_cmd, fam]) + struct.pack(">H", len(body)) + body


def v2_inet(src: str, sport: int, dst: str, dport: int) -> bytes:
    """A v2 PROXY TCP4 header (what HAProxy's ``send-proxy-v2`` sends for an IPv4 client)."""
    body = (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack(">HH", sport, dport)
    )
    return v2_header(0x21, 0x11, body)


def v1(src: str, sport: int, dport: int = 10000) -> bytes:
    """A v1 line from ``src``:``sport`` to loopback (of the same family)."""
    family, dst = ("TCP6", "::1") if ":" in src else ("TCP4", "127.0.0.1")
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()


#: What HAProxy sends for its own health checks with send-proxy-v2: LOCAL, no address.
V2_LOCAL = v2_header(0x20, 0x00, b"")
