"""msgCode 5, register, 6, login, and 1, resume: decode, ask ``ctx.services.accounts``, reply.

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
from ..accounts.service import LoginResult
from ..framer import Packet
from ..messages import (
    PASSWORD_FIELD,
    USERNAME_FIELD,
    MessageCode,
    ResultCode,
    decode_login,
    decode_register,
    decode_resume,
    encode_login_reply,
    encode_register_reply,
)
from .context import Context

if TYPE_CHECKING:
    from ..accounts import AccountService

__all__ = ["handle_login", "handle_register", "handle_resume"]


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


def _counted(ctx: Context, action: str, result: int) -> None:
    ctx._conn.shared.counters.account_result(action, result)


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
        result = await service.register(creds.username, creds.password, request.itype, ctx.peer)
    _counted(ctx, "register", result)
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
        outcome = await service.login(creds.username, creds.password, ctx.peer)
        await _logged_in(ctx, "login", outcome, creds.username, MessageCode.LOGIN)
        return
    _counted(ctx, "login", result)
    ctx.send(encode_login_reply(result, creds.username))


async def handle_resume(ctx: Context, packet: Packet) -> None:
    """Log in with a session token; the reply (code 1) has the login reply's layout."""
    request = decode_resume(packet.body)
    service = _service(ctx)
    if packet.body[USERNAME_FIELD - 1] != 0:
        outcome = LoginResult(ResultCode.INVALID_INPUT)
    elif service is None:
        outcome = LoginResult(_without_service(request.username, b"-"))
    else:
        outcome = await service.resume(request.username, request.token, ctx.peer)
    await _logged_in(ctx, "resume", outcome, request.username, MessageCode.RESUME)


async def _logged_in(
    ctx: Context, action: str, outcome: LoginResult, username: bytes, code: int
) -> None:
    """Reply; on success set ``ctx.user`` and fire ``on_login`` after the reply."""
    _counted(ctx, action, outcome.code)
    if outcome.user is None:
        ctx.send(encode_login_reply(outcome.code, username, code=code))
        return
    ctx.user = outcome.user
    ctx.send(encode_login_reply(outcome.code, username, outcome.token, code))
    await ctx.logged_in()  # after the reply: a welcome push follows it
