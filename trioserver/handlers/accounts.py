"""msgCode 5, register, and 6, login: decode, ask ``ctx.services.accounts``, reply.

Without an account service (``[accounts] url`` empty, or an embedder's
``Services`` without one) both answer "server unavailable" rather than pretend.
An over-long field (its last byte, which the original overwrote with NUL, is not
NUL) is "invalid input": the original cut it silently, and a cut password is a
different password. A successful login sets ``ctx.user`` (a failed one leaves it as
it was; the hub then finds the connection under that name) and, once the reply is
queued, fires the router's ``on_login`` handlers. Application handlers can require
a login::

    if ctx.user is None:
        return ctx.kick("login first")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..accounts.names import InvalidInput, validate
from ..framer import Packet
from ..messages import (
    PASSWORD_FIELD,
    USERNAME_FIELD,
    ResultCode,
    decode_login,
    decode_register,
    encode_login_reply,
    encode_register_reply,
)
from .context import Context

if TYPE_CHECKING:
    from ..accounts import AccountService

__all__ = ["handle_login", "handle_register"]


def _overflows(body: bytes, offset: int) -> bool:
    """True if the name field at ``offset`` or the password field after it is over-long."""
    name_end = offset + USERNAME_FIELD
    return body[name_end - 1] != 0 or body[name_end + PASSWORD_FIELD - 1] != 0


def _service(ctx: Context) -> AccountService | None:
    service: AccountService | None = ctx.services.accounts
    return service


def _without_service(username: bytes, password: bytes) -> ResultCode:
    """Invalid input is the request's fault whether or not there is a store."""
    try:
        validate(username, password)
    except InvalidInput:
        return ResultCode.INVALID_INPUT
    return ResultCode.SERVER_UNAVAILABLE


async def handle_register(ctx: Context, packet: Packet) -> None:
    """Register an account; the reply's iType carries the result code."""
    request = decode_register(packet.body)
    creds = request.credentials
    service = _service(ctx)
    if _overflows(packet.body, 4):
        result = ResultCode.INVALID_INPUT
    elif service is None:
        result = _without_service(creds.username, creds.password)
    else:
        result = await service.register(
            creds.username, creds.password, request.itype, str(ctx.peer)
        )
    ctx.send(encode_register_reply(result, creds.username))


async def handle_login(ctx: Context, packet: Packet) -> None:
    """Log in; on success the connection's ``ctx.user`` is the account's name."""
    creds = decode_login(packet.body)
    service = _service(ctx)
    if _overflows(packet.body, 0):
        result = ResultCode.INVALID_INPUT
    elif service is None:
        result = _without_service(creds.username, creds.password)
    else:
        outcome = await service.login(creds.username, creds.password, str(ctx.peer))
        result = outcome.code
        if outcome.user is not None:
            ctx.user = outcome.user
            ctx.send(encode_login_reply(result, creds.username))
            await ctx.logged_in()  # after the reply: a welcome push follows it
            return
    ctx.send(encode_login_reply(result, creds.username))
