"""Input rules for names and passwords: which bytes are acceptable, and which names are equal.

Pure functions, no I/O. Both fields arrive as raw bytes (``messages.Credentials``).

- Valid UTF-8, not empty, at most 55 (name) / 39 (password) bytes. The wire
  fields are 56 and 40 bytes and the original forces a NUL into the last one, so a
  field whose last byte is not NUL was over-long and *silently cut* by the original;
  we refuse it instead (``handlers.accounts``), since a cut password is a different one.
- No control characters (Unicode category Cc) in either. Names also refuse format
  characters (Cf: zero-width and bidi controls make look-alike names), line and
  paragraph separators, and leading or trailing white space.
- Both are normalised to NFC, so the same text typed on systems that compose
  accents differently (macOS NFD, Windows NFC) is the same name and password.
- **Names are case-insensitive**: ``Alice``, ``ALICE`` and ``alice`` are one
  account. The comparison key is ``NFC(casefold(NFC(name)))`` (Unicode full case
  folding, so ``Straße`` equals ``STRASSE``); the name is stored as first
  registered and that spelling is what ``ctx.user`` shows. Case-insensitive
  because two accounts a human cannot tell apart invite impersonation (RFC 8265's
  UsernameCaseMapped makes the same choice). Passwords are case-sensitive.

Changing these rules orphans accounts whose keys change, so they are not settings.
"""

from __future__ import annotations

import unicodedata
from typing import Final

import attrs

from ..messages import PASSWORD_FIELD, USERNAME_FIELD

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_PASSWORD_BYTES",
    "InvalidInput",
    "ValidCredentials",
    "name_key",
    "normalised",
    "validate",
]

MAX_NAME_BYTES: Final = USERNAME_FIELD - 1  # 55
MAX_PASSWORD_BYTES: Final = PASSWORD_FIELD - 1  # 39

_NAME_FORBIDDEN: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_PASSWORD_FORBIDDEN: Final = frozenset({"Cc", "Cs"})


class InvalidInput(ValueError):
    """A name or password breaks the input rules; the message says which rule (never the value)."""


@attrs.frozen
class ValidCredentials:
    """A name and password that passed the rules, normalised."""

    name: str  #: NFC, as the user typed it
    key: str  #: the case-folded comparison key the store indexes
    password: bytes = attrs.field(repr=False)  #: NFC, UTF-8 encoded


def name_key(name: str) -> str:
    """The comparison key of an already valid, NFC name."""
    if name.isascii():  # the common case: casefold is lower, and NFC changes nothing
        return name.lower()
    return unicodedata.normalize("NFC", name.casefold())


def _decode(raw: bytes, what: str, limit: int) -> str:
    if not raw:
        raise InvalidInput(f"{what} is empty")
    if len(raw) > limit:
        raise InvalidInput(f"{what} is over {limit} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{what} is not valid UTF-8") from None
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def _has(text: str, forbidden: frozenset[str]) -> bool:
    """True if a character of ``text`` is in one of the ``forbidden`` categories.

    ASCII text is checked with ``isprintable`` (its only forbidden characters are
    the Cc controls), not one ``unicodedata.category`` call per character: that
    was the costliest step of a register or login.
    """
    if text.isascii():
        return not text.isprintable()
    return any(unicodedata.category(c) in forbidden for c in text)


def validate(username: bytes, password: bytes) -> ValidCredentials:
    """Check both fields and normalise them; ``InvalidInput`` names the broken rule."""
    return ValidCredentials(*normalised(username, password))


def _ascii_fields(username: bytes, password: bytes) -> tuple[str, str, bytes] | None:
    """The common case, with the same rules: printable ASCII name and password.

    None when a field is not that (or breaks a rule): the general path then decides.
    """
    if not (
        0 < len(username) <= MAX_NAME_BYTES
        and 0 < len(password) <= MAX_PASSWORD_BYTES
        and username.isascii()
        and password.isascii()
    ):
        return None
    name = username.decode("ascii")
    if (
        not name.isprintable()  # in ASCII: anything but the controls
        or not password.decode("ascii").isprintable()
        or name[0] == " "  # a space is ASCII's only printable white space
        or name[-1] == " "
    ):
        return None
    return name, name.lower(), password


def normalised(username: bytes, password: bytes) -> tuple[str, str, bytes]:
    """``validate`` as a plain tuple (name, key, password): the batched path's, no record."""
    fields = _ascii_fields(username, password)
    if fields is not None:
        return fields
    name = _decode(username, "name", MAX_NAME_BYTES)
    if _has(name, _NAME_FORBIDDEN):
        raise InvalidInput("name contains a control, format or separator character")
    if name != name.strip():
        raise InvalidInput("name starts or ends with white space")
    text = _decode(password, "password", MAX_PASSWORD_BYTES)
    if _has(text, _PASSWORD_FORBIDDEN):
        raise InvalidInput("password contains a control character")
    # NFC can lengthen text (rarely); the wire limit applies to what was sent, not this.
    return name, name_key(name), text.encode("utf-8")
