"""Built-in handlers and the public handler API.

An application serves its own message codes (7 and up) like this::

    router = trioserver.default_router()

    @router.route(100)
    async def echo(ctx: Context, packet: Packet) -> None:
        ctx.reply(100, packet.body)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..messages import PING_CODE
from .context import Context, Handler, Services
from .ping import handle_ping

if TYPE_CHECKING:
    from ..dispatch import Router

__all__ = ["Context", "Handler", "Services", "default_router", "handle_ping"]


def default_router() -> Router:
    """A router with the built-in handlers: ping (0)."""
    from ..dispatch import Router  # dispatch imports this package's context module

    router = Router()
    router.add(PING_CODE, handle_ping, body_size=0, name="ping")
    return router
