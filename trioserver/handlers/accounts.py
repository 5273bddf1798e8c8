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

import struct
import zlib
from collections import Counter
from typing import TYPE_CHECKING, Final

import attrs
import trio

from ..accounts.names import InvalidInput, validate
from ..accounts.service import LoginFields, LoginResult, RegisterFields
from ..framer import Packet
from ..messages import (
    PASSWORD_FIELD,
    TOKEN_FIELD,
    USERNAME_FIELD,
    MessageCode,
    ResultCode,
    decode_login,
    decode_register,
    decode_resume,
    encode_login_reply,
    encode_register_reply,
)
from .context import BatchRun, Context

if TYPE_CHECKING:
    from ..accounts import AccountService

__all__ = ["AccountBatches", "handle_login", "handle_register", "handle_resume"]

_REGISTER: Final = int(MessageCode.REGISTER)
_LOGIN: Final = int(MessageCode.LOGIN)
_RESUME: Final = int(MessageCode.RESUME)
#: Most requests of one connection in one batch (a reader's inbox holds 1024 by default).
_MAX_RUN: Final = 1024
_PASSWORD_AT: Final = 4 + USERNAME_FIELD  # register: iType, name, password
_HEADER: Final = struct.Struct(">HHI").pack  # pkgLen, msgCode, CRC-32 of the body
_RESULT: Final = struct.Struct(">i").pack
_REGISTER_TAIL: Final = bytes(PASSWORD_FIELD)
_LOGIN_TAIL: Final = PASSWORD_FIELD - 4  # the token and zeros after the result


def _register_reply(result: int, username: bytes) -> bytes:
    """``encode_register_reply`` for a name of at most 55 bytes (as ``_text`` cuts it)."""
    body = _RESULT(result) + username.ljust(USERNAME_FIELD, b"\0") + _REGISTER_TAIL
    return _HEADER(8 + len(body), _REGISTER, zlib.crc32(body)) + body


def _login_reply(code: int, result: int, username: bytes, token: bytes = b"") -> bytes:
    """``encode_login_reply`` for a name of at most 55 bytes and a token of at most 32."""
    body = username.ljust(USERNAME_FIELD, b"\0") + _RESULT(result) + token.ljust(_LOGIN_TAIL, b"\0")
    return _HEADER(8 + len(body), code, zlib.crc32(body)) + body


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


# -- batches ------------------------------------------------------------------------------


def _text(body: bytes, start: int, size: int) -> bytes:
    """The NUL-terminated field at ``start`` (its last byte never counts), as bytes."""
    return body[start : start + size - 1].partition(b"\0")[0]


def _count_results(runs: list[BatchRun], action: str, counted: Counter[int]) -> None:
    counters = runs[0][0]._conn.shared.counters
    for result, count in counted.items():
        counters.account_result(action, result, count)


@attrs.define(eq=False)
class AccountBatches:
    """Register (5), login (6) and resume (1) a batch at a time: the default router's.

    Every request gets what its handler above would answer, with the same limits,
    counters and replies; the account service does a batch's store work in one call
    (:meth:`~trioserver.accounts.AccountService.register_many` and friends). Takes
    requests only while the service hashes cheaply (``AccountService.batches``), and
    logins and resumes only without login limits shared through the store
    (``batches_logins``); the handlers above serve the others one by one.
    """

    def run_limit(self, ctx: Context, code: int) -> int:
        service = _service(ctx)
        if service is None or not service.batches:
            return 0
        if code != _REGISTER:
            if not service.batches_logins:
                return 0  # shared login limits: each attempt reads and writes its own
            if ctx._login is not None:
                return 1  # its on_login handlers run after each login's reply, before the next
        return _MAX_RUN

    async def handle_batch(self, runs: list[BatchRun]) -> None:
        by_code: dict[int, list[BatchRun]] = {}
        for run in runs:
            by_code.setdefault(run[1][0].code, []).append(run)
        if len(by_code) == 1:
            ((code, same),) = by_code.items()
            await self._handle(code, same)
            return
        async with trio.open_nursery() as nursery:  # registers commit while logins read
            for code, same in by_code.items():
                nursery.start_soon(self._handle, code, same)

    async def _handle(self, code: int, runs: list[BatchRun]) -> None:
        if code == _REGISTER:
            await self._register(runs)
        else:
            await self._login(code, runs)

    async def _register(self, runs: list[BatchRun]) -> None:
        requests: list[RegisterFields] = []
        replies: list[tuple[Context, bytes, int]] = []  # (ctx, username, request or -1)
        for ctx, packets in runs:
            peer = ctx.peer
            for packet in packets:
                body = packet.body
                username = _text(body, 4, USERNAME_FIELD)
                if _overflows(body, 4):
                    replies.append((ctx, username, -1))
                    continue
                replies.append((ctx, username, len(requests)))
                password = _text(body, _PASSWORD_AT, PASSWORD_FIELD)
                itype = int.from_bytes(body[:4], "big", signed=True)
                requests.append((username, password, itype, peer))
        service = _service(runs[0][0])
        if service is None:
            results = [_without_service(r[0], r[1]) for r in requests]
        else:
            results = await service.register_many(requests)
        counted: Counter[int] = Counter()
        for ctx, username, index in replies:
            result = ResultCode.INVALID_INPUT if index < 0 else results[index]
            counted[result] += 1
            ctx.send(_register_reply(result, username))
        _count_results(runs, "register", counted)

    async def _login(self, code: int, runs: list[BatchRun]) -> None:
        resume = code == _RESUME
        secret_at, secret_size = (
            (USERNAME_FIELD, TOKEN_FIELD) if resume else (USERNAME_FIELD, PASSWORD_FIELD)
        )
        requests: list[LoginFields] = []
        replies: list[tuple[Context, bytes, int]] = []
        for ctx, packets in runs:
            peer = ctx.peer
            for packet in packets:
                body = packet.body
                username = _text(body, 0, USERNAME_FIELD)
                if body[USERNAME_FIELD - 1] or (not resume and body[-1]):
                    replies.append((ctx, username, -1))
                    continue
                replies.append((ctx, username, len(requests)))
                secret = (
                    body[secret_at : secret_at + secret_size]
                    if resume
                    else _text(body, secret_at, secret_size)
                )
                requests.append((username, secret, peer))
        service = _service(runs[0][0])
        if service is None:
            password = b"-" if resume else None
            results = [LoginResult(_without_service(r[0], password or r[1])) for r in requests]
        elif resume:
            results = await service.resume_many(requests)
        else:
            results = await service.login_many(requests)
        counted: Counter[int] = Counter()
        welcome: list[Context] = []
        for ctx, username, index in replies:
            if index < 0:
                counted[ResultCode.INVALID_INPUT] += 1
                ctx.send(_login_reply(code, ResultCode.INVALID_INPUT, username))
                continue
            outcome = results[index]
            counted[outcome.code] += 1
            if outcome.user is None:
                ctx.send(_login_reply(code, outcome.code, username))
                continue
            ctx.user = outcome.user
            ctx.send(_login_reply(code, outcome.code, username, outcome.token))
            if ctx._login is not None:
                welcome.append(ctx)
        _count_results(runs, "resume" if resume else "login", counted)
        for ctx in welcome:  # after the replies: a welcome push follows its login's reply
            await ctx.logged_in()
