"""Password hashes: scrypt with a per-password salt, parameters stored with the hash.

Pure and synchronous (the service runs ``hash``/``verify`` in threads). A stored
hash is one self-describing string, so parameters can change without breaking
existing accounts::

    $scrypt$ln=14,r=8,p=1$<salt, base64>$<hash, base64>
    $sha256-insecure$<salt, hex>$<hash, hex>

``sha256-insecure`` is one salted SHA-256: a leaked database falls to brute force at
once. It exists only so benchmarks measure the server instead of scrypt, so it is
made as cheaply as it can be: its salts are a random per-process prefix and a
counter (unique, no ``os.urandom`` call per hash), in hex (no base64 round trip).
Older ``sha256-insecure`` hashes in base64 still verify.

Comparison is constant-time (``hmac.compare_digest``); a hash that cannot be parsed
never verifies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import os
from typing import Final

import attrs

__all__ = ["Hasher", "InsecureFastHasher", "ScryptHasher", "hasher_for", "is_cheap", "verify"]

SALT_BYTES: Final = 16
KEY_BYTES: Final = 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem: what these parameters need plus slack (OpenSSL's default cap is 32 MiB).
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES, maxmem=129 * n * r * p + 2**20
    )


class Hasher:
    """Makes new hashes with one scheme and parameters; ``verify`` reads any scheme."""

    #: True when hashing is cheap enough to run on the event loop (no thread hop).
    inline: bool = False

    def hash(self, password: bytes) -> str:
        raise NotImplementedError

    def is_current(self, stored: str) -> bool:
        """True if ``stored`` was made with this hasher's scheme and parameters."""
        raise NotImplementedError


@attrs.frozen
class ScryptHasher(Hasher):
    """scrypt with cost ``n`` (a power of two), block size ``r`` and parallelism ``p``."""

    n: int = 16384
    r: int = 8
    p: int = 1

    def __attrs_post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1):
            raise ValueError(f"scrypt n must be a power of two >= 2, got {self.n!r}")

    @property
    def _params(self) -> str:
        return f"ln={self.n.bit_length() - 1},r={self.r},p={self.p}"

    def hash(self, password: bytes) -> str:
        salt = os.urandom(SALT_BYTES)
        key = _scrypt(password, salt, self.n, self.r, self.p)
        return f"$scrypt${self._params}${_b64(salt)}${_b64(key)}"

    def is_current(self, stored: str) -> bool:
        return stored.startswith(f"$scrypt${self._params}$")


_SALT_PREFIX: Final = os.urandom(SALT_BYTES // 2)
_salt_counter: Final = itertools.count()


@attrs.frozen
class InsecureFastHasher(Hasher):
    """One salted SHA-256. INSECURE: for benchmarks and tests only (see the module docstring)."""

    inline = True

    def hash(self, password: bytes) -> str:
        salt = _SALT_PREFIX + next(_salt_counter).to_bytes(SALT_BYTES // 2, "big")
        key = hashlib.sha256(salt + password).hexdigest()
        return f"$sha256-insecure${salt.hex()}${key}"

    def is_current(self, stored: str) -> bool:
        return stored.startswith("$sha256-insecure$")


def hasher_for(scheme: str, *, n: int = 16384, r: int = 8, p: int = 1) -> Hasher:
    """The hasher a ``[accounts] hash`` setting names."""
    if scheme == "scrypt":
        return ScryptHasher(n, r, p)
    if scheme == "insecure-fast":
        return InsecureFastHasher()
    raise ValueError(f"unknown password hash scheme {scheme!r}")


def is_cheap(stored: str) -> bool:
    """True if verifying ``stored`` takes microseconds (no reason for a thread)."""
    return stored.startswith("$sha256-insecure$")


_FAST_PREFIX: Final = "$sha256-insecure$"
_FAST_SALT_END: Final = len(_FAST_PREFIX) + 2 * SALT_BYTES
_FAST_LENGTH: Final = _FAST_SALT_END + 1 + 2 * KEY_BYTES


def verify(password: bytes, stored: str) -> bool:
    """True if ``password`` matches ``stored`` (any scheme); constant-time in the hash bytes."""
    if (
        len(stored) == _FAST_LENGTH
        and stored.startswith(_FAST_PREFIX)
        and stored[_FAST_SALT_END] == "$"
    ):  # the insecure-fast hash as made now: fixed places, no split
        try:
            salt = bytes.fromhex(stored[len(_FAST_PREFIX) : _FAST_SALT_END])
        except ValueError:
            return False
        digest = hashlib.sha256(salt + password).hexdigest()  # lower-case hex, as stored
        tail = stored[_FAST_SALT_END + 1 :]
        return tail.isascii() and hmac.compare_digest(digest, tail)
    try:
        _, scheme, *fields = stored.split("$")
        if scheme == "scrypt" and len(fields) == 3:
            params = dict(item.split("=", 1) for item in fields[0].split(","))
            n, r, p = 2 ** int(params["ln"]), int(params["r"]), int(params["p"])
            salt, expected = _unb64(fields[1]), _unb64(fields[2])
            actual = _scrypt(password, salt, n, r, p)
        elif scheme == "sha256-insecure" and len(fields) == 2:
            if len(fields[1]) == 2 * KEY_BYTES:  # hex, as made now
                salt, expected = bytes.fromhex(fields[0]), bytes.fromhex(fields[1])
            else:  # base64, as made before
                salt, expected = _unb64(fields[0]), _unb64(fields[1])
            actual = hashlib.sha256(salt + password).digest()
        else:
            return False
    except (ValueError, KeyError):  # binascii.Error is a ValueError
        return False
    return hmac.compare_digest(actual, expected)
