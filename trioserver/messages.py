"""Bodies of the built-in messages (docs/protocol.md, "Messages"): pure encode/decode.

Names and passwords travel as NUL-padded byte fields (``char[56]`` and ``char[40]``);
the original forces a NUL into the last byte, so at most 55 and 39 bytes count.
Decoding keeps the raw bytes up to the first NUL; deciding whether they are valid
(encoding, emptiness) is the account layer's job, so a hostile body can never
raise here.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

import attrs

from .framer import encode

__all__ = [
    "FIRST_APPLICATION_CODE",
    "LOGIN_BODY_SIZE",
    "PASSWORD_FIELD",
    "REGISTER_BODY_SIZE",
    "RESERVED_CODES",
    "RESUME_BODY_SIZE",
    "TOKEN_FIELD",
    "TOKEN_OFFSET",
    "USERNAME_FIELD",
    "Credentials",
    "LoginReply",
    "MessageCode",
    "RegisterReply",
    "RegisterRequest",
    "ResultCode",
    "ResumeRequest",
    "decode_login",
    "decode_login_reply",
    "decode_register",
    "decode_register_reply",
    "decode_resume",
    "encode_login",
    "encode_login_reply",
    "encode_register",
    "encode_register_reply",
    "encode_resume",
]


class MessageCode(enum.IntEnum):
    """The protocol's own message codes; applications use 7 and up."""

    PING = 0
    #: Log in with a session token instead of a password.
    RESUME = 1
    REGISTER = 5
    LOGIN = 6


#: Codes the protocol keeps for itself without a message yet: no handler may take them.
RESERVED_CODES: Final = frozenset({2, 3, 4})
#: The first code free for applications.
FIRST_APPLICATION_CODE: Final = 7
USERNAME_FIELD: Final = 56
PASSWORD_FIELD: Final = 40
REGISTER_BODY_SIZE: Final = 4 + USERNAME_FIELD + PASSWORD_FIELD  # 100
LOGIN_BODY_SIZE: Final = USERNAME_FIELD + PASSWORD_FIELD  # 96
#: A session token: in a login or resume reply at body offset 60, after the result code.
TOKEN_FIELD: Final = 32
TOKEN_OFFSET: Final = USERNAME_FIELD + 4  # 60
RESUME_BODY_SIZE: Final = USERNAME_FIELD + TOKEN_FIELD  # 88

_I32: Final = struct.Struct(">i")


class ResultCode(enum.IntEnum):
    """Result codes carried by register and login replies."""

    OK = 0
    #: register: name taken; login: wrong name or password (never says which).
    REJECTED = 1
    INVALID_INPUT = 2
    SERVER_UNAVAILABLE = 3
    RATE_LIMITED = 4
    #: The server's password-hash work is full: retry in a moment (nothing was counted).
    BUSY = 5


@attrs.frozen
class Credentials:
    """A username and password as raw bytes (up to the first NUL of each field)."""

    username: bytes
    password: bytes = attrs.field(repr=False)


@attrs.frozen
class RegisterRequest:
    itype: int
    credentials: Credentials


@attrs.frozen
class RegisterReply:
    result: int
    username: bytes


@attrs.frozen
class LoginReply:
    result: int
    username: bytes
    #: The session token (32 bytes) of a successful login or resume; zeros otherwise.
    token: bytes = attrs.field(default=bytes(TOKEN_FIELD), repr=False)


@attrs.frozen
class ResumeRequest:
    username: bytes
    token: bytes = attrs.field(repr=False)


def _field(value: bytes, size: int, what: str) -> bytes:
    if len(value) > size - 1:
        raise ValueError(f"{what} of {len(value)} bytes is over the {size - 1}-byte limit")
    return value.ljust(size, b"\0")


def _unfield(raw: bytes | memoryview) -> bytes:
    # The original forces a NUL into the last byte, so the last byte never counts.
    data = bytes(raw[:-1])
    end = data.find(b"\0")
    return data if end < 0 else data[:end]


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def encode_register(username: str | bytes, password: str | bytes, itype: int = 1) -> bytes:
    """A whole register packet."""
    body = (
        _I32.pack(itype)
        + _field(_as_bytes(username), USERNAME_FIELD, "username")
        + _field(_as_bytes(password), PASSWORD_FIELD, "password")
    )
    return encode(MessageCode.REGISTER, body)


def encode_login(username: str | bytes, password: str | bytes) -> bytes:
    """A whole login packet."""
    body = _field(_as_bytes(username), USERNAME_FIELD, "username") + _field(
        _as_bytes(password), PASSWORD_FIELD, "password"
    )
    return encode(MessageCode.LOGIN, body)


def decode_register(body: bytes) -> RegisterRequest:
    """The register body; the caller checked its size is REGISTER_BODY_SIZE."""
    if len(body) != REGISTER_BODY_SIZE:
        raise ValueError(f"register body must be {REGISTER_BODY_SIZE} bytes, got {len(body)}")
    (itype,) = _I32.unpack_from(body, 0)
    view = memoryview(body)
    name = _unfield(view[4 : 4 + USERNAME_FIELD])
    password = _unfield(view[4 + USERNAME_FIELD :])
    return RegisterRequest(itype, Credentials(name, password))


def decode_login(body: bytes) -> Credentials:
    """The login body; the caller checked its size is LOGIN_BODY_SIZE."""
    if len(body) != LOGIN_BODY_SIZE:
        raise ValueError(f"login body must be {LOGIN_BODY_SIZE} bytes, got {len(body)}")
    view = memoryview(body)
    return Credentials(_unfield(view[:USERNAME_FIELD]), _unfield(view[USERNAME_FIELD:]))


def encode_resume(username: str | bytes, token: bytes) -> bytes:
    """A whole resume packet: the name and the token a login or resume reply carried."""
    if len(token) != TOKEN_FIELD:
        raise ValueError(f"a session token is {TOKEN_FIELD} bytes, got {len(token)}")
    return encode(
        MessageCode.RESUME, _field(_as_bytes(username), USERNAME_FIELD, "username") + token
    )


def decode_resume(body: bytes) -> ResumeRequest:
    """The resume body; the caller checked its size is RESUME_BODY_SIZE."""
    if len(body) != RESUME_BODY_SIZE:
        raise ValueError(f"resume body must be {RESUME_BODY_SIZE} bytes, got {len(body)}")
    view = memoryview(body)
    return ResumeRequest(_unfield(view[:USERNAME_FIELD]), bytes(view[USERNAME_FIELD:]))


def _echo(username: bytes) -> bytes:
    return username[: USERNAME_FIELD - 1].ljust(USERNAME_FIELD, b"\0")


def encode_register_reply(result: int, username: bytes) -> bytes:
    """Register reply: iType carries the result, the name is echoed, the password zeroed."""
    return encode(MessageCode.REGISTER, _I32.pack(result) + _echo(username) + bytes(PASSWORD_FIELD))


def encode_login_reply(
    result: int, username: bytes, token: bytes = b"", code: int = MessageCode.LOGIN
) -> bytes:
    """Login (or resume) reply: the name echoed, the result as an i32 at body offset 56,
    the session token (or zeros) at 60, zeros after."""
    return encode(
        code,
        _echo(username) + _I32.pack(result) + token[:TOKEN_FIELD].ljust(PASSWORD_FIELD - 4, b"\0"),
    )


def decode_register_reply(body: bytes) -> RegisterReply:
    if len(body) != REGISTER_BODY_SIZE:
        raise ValueError(f"register reply body must be {REGISTER_BODY_SIZE} bytes, got {len(body)}")
    (result,) = _I32.unpack_from(body, 0)
    return RegisterReply(result, _unfield(memoryview(body)[4 : 4 + USERNAME_FIELD]))


def decode_login_reply(body: bytes) -> LoginReply:
    if len(body) != LOGIN_BODY_SIZE:
        raise ValueError(f"login reply body must be {LOGIN_BODY_SIZE} bytes, got {len(body)}")
    (result,) = _I32.unpack_from(body, USERNAME_FIELD)
    token = body[TOKEN_OFFSET : TOKEN_OFFSET + TOKEN_FIELD]
    return LoginReply(result, _unfield(memoryview(body)[:USERNAME_FIELD]), token)
