"""Content-Type by file extension.

A fixed table rather than :mod:`mimetypes`: the stdlib reads the host's
``/etc/mime.types``, so the same file would be served with different types on
different machines, and it guesses some types badly for the web (``.js``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["CONTENT_TYPES", "DEFAULT_CONTENT_TYPE", "content_type_for"]

DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"

_UTF8 = "; charset=utf-8"

#: Lower-case extension (without the dot) -> Content-Type value.
CONTENT_TYPES: Final[Mapping[str, str]] = {
    "html": "text/html" + _UTF8,
    "htm": "text/html" + _UTF8,
    "css": "text/css" + _UTF8,
    "js": "text/javascript" + _UTF8,
    "mjs": "text/javascript" + _UTF8,
    "json": "application/json",
    "map": "application/json",
    "txt": "text/plain" + _UTF8,
    "md": "text/markdown" + _UTF8,
    "csv": "text/csv" + _UTF8,
    "xml": "application/xml",
    "svg": "image/svg+xml",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "avif": "image/avif",
    "ico": "image/x-icon",
    "bmp": "image/bmp",
    "wasm": "application/wasm",
    "pdf": "application/pdf",
    "woff": "font/woff",
    "woff2": "font/woff2",
    "ttf": "font/ttf",
    "otf": "font/otf",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "wav": "audio/wav",
    "mp4": "video/mp4",
    "webm": "video/webm",
    "zip": "application/zip",
    "gz": "application/gzip",
    "tar": "application/x-tar",
}


def content_type_for(name: bytes | str) -> str:
    """The Content-Type for a file name (``DEFAULT_CONTENT_TYPE`` when unknown)."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    base = name.rpartition("/")[2]
    dot = base.rfind(".")
    if dot <= 0:
        return DEFAULT_CONTENT_TYPE
    return CONTENT_TYPES.get(base[dot + 1 :].lower(), DEFAULT_CONTENT_TYPE)
