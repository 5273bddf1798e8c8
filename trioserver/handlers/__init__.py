"""Built-in handlers and the public handler API.

An application serves its own message codes (7 and up) like this::

    router = trioserver.default_router()

    @router.route(100)
    async def echo(ctx: Context, packet: Packet) -> None:
        ctx.reply(100, packet.body)
"""

from __future__ import annotations

from ..messages import LOGIN_BODY_SIZE, REGISTER_BODY_SIZE, RESUME_BODY_SIZE, MessageCode
from .accounts import AccountBatches, handle_login, handle_register, handle_resume
from .context import Context, Handler, Services
from .ping import handle_ping
from .router import Router

__all__ = [
    "AccountBatches",
    "Context",
    "Handler",
    "Services",
    "default_router",
    "handle_login",
    "handle_ping",
    "handle_register",
    "handle_resume",
]


def default_router() -> Router:
    """A router with the built-in handlers: ping (0), resume (1), register (5) and login (6).

    Register and login use ``ctx.services.accounts``, which the worker opens from
    ``[accounts]`` unless given one; without it they answer "server unavailable".
    """
    router = Router()
    accounts = AccountBatches()  # while hashes are cheap, a batch at a time
    router.add(MessageCode.PING, handle_ping, body_size=0, name="ping")
    router.add(
        MessageCode.REGISTER,
        handle_register,
        body_size=REGISTER_BODY_SIZE,
        name="register",
        batch=accounts,
    )
    router.add(
        MessageCode.LOGIN, handle_login, body_size=LOGIN_BODY_SIZE, name="login", batch=accounts
    )
    router.add(
        MessageCode.RESUME, handle_resume, body_size=RESUME_BODY_SIZE, name="resume", batch=accounts
    )
    return router
