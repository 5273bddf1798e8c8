"""Validators and ranges: the pure rules behind 304, 206 and 416 (RFC 9110 §13, §14).

Only what a static file server needs: strong ETags of our own making, one
``Last-Modified`` per file, and a single byte range. A multi-range request is
answered with the whole file (a server may ignore Range, §14.2), which avoids
``multipart/byteranges`` and the amplification tricks that come with it.
"""

from __future__ import annotations

import enum
from email.utils import formatdate, mktime_tz, parsedate_tz
from typing import Final

__all__ = [
    "UNSATISFIABLE",
    "Unsatisfiable",
    "etag_for",
    "etag_matches",
    "http_date",
    "modified_since",
    "parse_range",
]

#: Longest number we parse in a Range header; longer is certainly past any file.
_MAX_DIGITS: Final = 18
_HUGE: Final = 10**_MAX_DIGITS


class Unsatisfiable(enum.Enum):
    """The type of :data:`UNSATISFIABLE` (a well-formed range outside the file: 416)."""

    UNSATISFIABLE = "UNSATISFIABLE"


UNSATISFIABLE: Final = Unsatisfiable.UNSATISFIABLE


def http_date(timestamp: float) -> bytes:
    """IMF-fixdate: ``b"Sun, 06 Nov 1994 08:49:37 GMT"``."""
    return formatdate(timestamp, usegmt=True).encode("ascii")


def etag_for(mtime_ns: int, size: int, inode: int) -> bytes:
    """A strong ETag that changes whenever the file's mtime, size or inode does."""
    return b'"%x-%x-%x"' % (mtime_ns, size, inode)


def etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    """Weak comparison of ``If-None-Match`` against our ETag (``*`` matches any file)."""
    value = if_none_match.strip()
    if value == b"*":
        return True
    for candidate in value.split(b","):
        candidate = candidate.strip()
        if candidate.startswith(b"W/"):
            candidate = candidate[2:]
        if candidate == etag:
            return True
    return False


def modified_since(if_modified_since: bytes, mtime: int, now: float) -> bool:
    """False when the file (mtime in whole seconds) is no newer than the date given.

    The field is ignored (True: the full response is sent) when its date cannot be
    parsed or is later than ``now``, the server's clock (RFC 9110 §13.1.3: the date
    is read on the origin's clock, and one in its future is not a date the server
    ever sent as Last-Modified; a 304 on it would keep a stale copy fresh for good).
    """
    try:
        parsed = parsedate_tz(if_modified_since.decode("latin-1"))
        if parsed is None:
            return True
        since = mktime_tz(parsed)
    except (ValueError, OverflowError, TypeError):
        return True
    return since > now or mtime > since


def parse_range(value: bytes, size: int) -> tuple[int, int] | Unsatisfiable | None:
    """``(first, last)`` inclusive byte positions, :data:`UNSATISFIABLE`, or None to ignore.

    None (send the whole file) for anything but one well-formed ``bytes=`` range:
    other units, several ranges, syntax errors, ``last < first``.
    """
    unit, eq, spec = value.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition(b"-")
    if not dash:
        return None
    first_text, last_text = first_text.strip(), last_text.strip()
    first, last = _number(first_text), _number(last_text)
    if first is None:
        if first_text or last is None:
            return None
        if last == 0 or size == 0:
            return UNSATISFIABLE
        return max(0, size - last), size - 1
    if last is None:
        if last_text:
            return None
        last = size - 1
    elif last < first:
        return None
    if first >= size:
        return UNSATISFIABLE
    return first, min(last, size - 1)


def _number(text: bytes) -> int | None:
    """A decimal number; a longer one than any file can be is capped, not parsed."""
    if not text or not text.isdigit():
        return None
    return int(text) if len(text) <= _MAX_DIGITS else _HUGE
