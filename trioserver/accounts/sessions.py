"""Session tokens for RESUME (1): 32 bytes any worker holding the shared key can check.

A token is ``expiry`` (u32, seconds since the epoch) + ``nonce`` (u32) + the first
24 bytes of HMAC-SHA256(key, label | name key | expiry | nonce | hash binding), where
the hash binding is SHA-256 of the account's stored password hash. So a token:

- verifies on every worker and instance with the same key and nothing else
  (no table of sessions to share);
- cannot be forged without the key, nor used for another name (the name key is
  signed);
- expires at ``expiry`` (wall-clock time, shared across machines);
- stops working when the password changes (the stored hash, hence the binding,
  changes).

Pure: the key, the clock and the nonce are passed in. The key file is read or
created by :func:`load_key`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import os
import struct
from pathlib import Path
from typing import Any, Final

__all__ = ["KEY_BYTES", "TOKEN_BYTES", "load_key", "make_token", "token_valid"]

TOKEN_BYTES: Final = 32
KEY_BYTES: Final = 32
_LABEL: Final = b"trioserver session v1\0"
_HEAD: Final = struct.Struct(">II")
_MAC_BYTES: Final = TOKEN_BYTES - _HEAD.size  # 24 bytes: 192 bits
_BLOCK: Final = 64  # SHA-256's block size, as HMAC pads the key to it


@functools.lru_cache(maxsize=8)
def _pads(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256's inner and outer hash states for ``key`` (RFC 2104), made once per key:
    a MAC then costs two state copies instead of two key setups."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return (
        hashlib.sha256(bytes(b ^ 0x36 for b in key)),
        hashlib.sha256(bytes(b ^ 0x5C for b in key)),
    )


@functools.lru_cache(maxsize=4096)
def _binding(password_hash: str) -> bytes:
    """SHA-256 of the stored hash (kept: a resume checks a token, then makes one, with it)."""
    return hashlib.sha256(password_hash.encode("utf-8")).digest()


def _mac(key: bytes, name_key: str, head: bytes, password_hash: str) -> bytes:
    inner, outer = _pads(key)
    inner = inner.copy()
    inner.update(b"".join((_LABEL, name_key.encode("utf-8"), b"\0", head, _binding(password_hash))))
    outer = outer.copy()
    outer.update(inner.digest())
    mac: bytes = outer.digest()  # = HMAC-SHA256(key, message)
    return mac[:_MAC_BYTES]


def make_token(key: bytes, name_key: str, password_hash: str, expiry: float, nonce: int) -> bytes:
    """A token for ``name_key`` valid until ``expiry`` while its hash is ``password_hash``."""
    head = _HEAD.pack(int(expiry) & 0xFFFFFFFF, nonce & 0xFFFFFFFF)
    return head + _mac(key, name_key, head, password_hash)


def token_valid(key: bytes, token: bytes, name_key: str, password_hash: str, now: float) -> bool:
    """True if ``token`` was made with ``key`` for this name and hash, and has not expired."""
    if len(token) != TOKEN_BYTES:
        return False
    expiry, _ = _HEAD.unpack_from(token)
    expected = _mac(key, name_key, token[: _HEAD.size], password_hash)
    return hmac.compare_digest(expected, token[_HEAD.size :]) and now < expiry


def load_key(path: Path) -> bytes:
    """The key in ``path``; a new random one (mode 0600) if the file does not exist.

    Safe when several workers start at once: the new key is written to a private
    temporary file and linked into place, so a reader sees a whole key or none,
    and the first link wins.
    """
    with contextlib.suppress(FileNotFoundError):
        return _read(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(os.urandom(KEY_BYTES).hex().encode("ascii") + b"\n")
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> bytes:
    text = path.read_bytes().strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = text  # any other content is used as the key bytes themselves
    if len(key) < 16:
        raise ValueError(f"session secret {path} holds under 16 bytes of key")
    return key
