"""msgCode 0, ping: the heartbeat. The reply is the request's own 8 bytes."""

from __future__ import annotations

from ..framer import PING, Packet
from .context import Context

__all__ = ["handle_ping"]


def handle_ping(ctx: Context, packet: Packet) -> None:
    """Answer a ping (the reader already moved the heartbeat deadline)."""
    ctx.send(PING)
