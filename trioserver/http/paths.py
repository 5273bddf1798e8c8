"""Request target -> a path inside the document root, or a refusal.

Two steps, both pure string work on bytes (file names are bytes on POSIX, so a
target that is not UTF-8 still maps to the file it names):

1. :func:`split_target` takes the path out of an origin-form (``/a/b?q``) or
   absolute-form (``http://host/a/b``) target; anything else is malformed (400).
2. :func:`relative_path` percent-decodes it once and refuses every shape that
   could name something outside the root or confuse the file system:

   ===============================  =======================================
   refused                          because
   ===============================  =======================================
   ``..`` and ``.`` segments        climb out of (or around in) the root;
                                    clients remove them before sending
   (also when percent-encoded)      ``%2e%2e`` decodes to ``..``
   ``%2f`` (an encoded ``/``)       would split a segment after the check
   NUL (``%00``)                    truncates the name in C calls
   backslash (``\\``, ``%5c``)       a separator on other systems
   ===============================  =======================================

   Empty segments are dropped, so ``//etc/passwd`` is ``etc/passwd`` *under the
   root*: the result never starts with ``/`` and is only ever appended to the
   root. Decoding happens exactly once, so ``%252e`` stays the literal name ``%2e``.

Symlinks are the file system's business: the policy resolves the joined path with
``realpath`` and checks it is still under the root (see ``policy.py``).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote_to_bytes

__all__ = ["relative_path", "split_target"]

_FORBIDDEN_SEGMENTS: Final = frozenset((b".", b".."))


def split_target(target: bytes) -> tuple[bytes, bytes] | None:
    """``(path, query)`` of a request target (query includes its ``?``), or None if malformed."""
    if target[:1] == b"/" and b"?" not in target and b"#" not in target:
        return target, b""  # the common case, in three C calls
    if not target.startswith(b"/"):
        lowered = target[:8].lower()
        if lowered.startswith(b"http://"):
            rest = target[7:]
        elif lowered.startswith(b"https://"):
            rest = target[8:]
        else:
            return None  # asterisk-form, authority-form or garbage
        end = len(rest)
        for mark in (b"/", b"?", b"#"):
            at = rest.find(mark)
            if 0 <= at < end:
                end = at
        target = rest[end:]
        if not target.startswith(b"/"):
            target = b"/" + target
    cut = len(target)
    for mark in (b"?", b"#"):
        at = target.find(mark)
        if 0 <= at < cut:
            cut = at
    path, query = target[:cut], target[cut:]
    hash_at = query.find(b"#")
    if hash_at >= 0:
        query = query[:hash_at]
    return path, query


def relative_path(path: bytes) -> tuple[bytes, bool] | None:
    """``(relative, is_directory)`` for a URL path, or None when it must not be served.

    ``relative`` is decoded, has no leading or doubled ``/`` and no dot segments;
    ``is_directory`` says the path ended with ``/`` (serve the index file).
    """
    if b"%" in path:
        lowered = path.lower()
        if b"%2f" in lowered or b"%5c" in lowered or b"%00" in lowered:
            return None
        path = unquote_to_bytes(path)
    if b"\x00" in path or b"\\" in path:
        return None
    is_directory = path.endswith(b"/")
    segments = [segment for segment in path.split(b"/") if segment]
    for segment in segments:
        if segment in _FORBIDDEN_SEGMENTS:
            return None
    return b"/".join(segments), is_directory or not segments
