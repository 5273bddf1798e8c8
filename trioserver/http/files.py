"""URL path -> a checked file in the document root, with a small cache of hot files.

Resolving a path safely costs a ``realpath`` (one ``lstat`` per component), a
``stat`` and, for small files, an open and a read: tens of microseconds, more than
the whole budget of a keep-alive request (benchmarks/README.md, "Goals"). So each URL path's answer
is kept as a :class:`FileEntry` and trusted for ``check_interval`` seconds; after
that the next request resolves the path again, and the entry is rebuilt (body
re-read) only if the file's identity (device, inode, size, mtime) changed. That is
nginx's ``open_file_cache_valid``: a changed file is noticed within one interval,
and ``check_interval = 0`` re-checks on every request.

Bodies of files up to ``max_file_size`` are kept in memory, within ``max_bytes`` in
total; larger files are sent from disk (``FileRange``). The entry count is capped
too, since a scan of many distinct paths must not grow memory. Eviction is
approximately least-recently-used: an entry moves to the young end whenever it is
re-checked, so hot entries survive and cold ones leave first, at no cost on the
hot path. Paths that do not resolve are not cached (a scan of random names would
push out the hot files).

Safety: the resolved path must be the root or under it, so a symlink pointing
outside the root is refused (404) however it is reached; only regular files are
served (a FIFO would block the worker, a device is never content). Opening a file
uses ``O_NOFOLLOW`` and checks the descriptor is the file that was checked.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final

import attrs

from .conditional import etag_for, http_date
from .content_types import content_type_for
from .paths import relative_path

__all__ = ["FileCache", "FileCacheStatistics", "FileEntry", "FileRange", "Identity"]

#: (st_dev, st_ino, st_size, st_mtime_ns): when any of these changes, the file did.
Identity = tuple[int, int, int, int]

#: Lookup outcomes that are not a file: the status to answer.
MOVED: Final = 301
FORBIDDEN: Final = 403
NOT_FOUND: Final = 404

_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)
#: errno of a path that is not there, or not reachable as a file.
_MISSING: Final = frozenset(
    (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL)
)


@attrs.frozen(slots=True)
class FileRange:
    """Bytes ``offset .. offset+length`` of a file, to be sent from disk."""

    path: bytes
    offset: int
    length: int
    identity: Identity


@attrs.define(eq=False, slots=True)
class FileEntry:
    """What one URL path resolved to, and the facts every response about it needs."""

    real_path: bytes
    identity: Identity
    size: int
    #: Whole seconds, as Last-Modified carries them.
    mtime: int
    content_type: bytes
    etag: bytes
    last_modified: bytes
    #: The whole file, when it is small enough to keep; else None (send from disk).
    body: bytes | None
    #: When the path was last resolved and the file checked (clock seconds).
    checked: float
    #: The fixed parts of this file's 200 and 304 heads, built by the policy on
    #: first use and dropped with the entry when the file changes.
    heads: tuple[bytes, bytes] | None = None


@attrs.frozen
class FileCacheStatistics:
    """A snapshot of the cache's counters."""

    entries: int
    body_bytes: int
    hits: int
    misses: int
    rechecks: int


class FileCache:
    """Resolves URL paths under ``root`` and keeps the answers for hot files."""

    def __init__(
        self,
        root: bytes | str | os.PathLike[str],
        *,
        index: str = "index.html",
        max_entries: int = 1024,
        max_bytes: int = 4 * 1024 * 1024,
        max_file_size: int = 64 * 1024,
        check_interval: float = 1.0,
    ) -> None:
        real_root = os.path.realpath(os.fsencode(root))
        if not os.path.isdir(real_root):
            raise ValueError(f"document root {os.fsdecode(real_root)!r} is not a directory")
        if not index or "/" in index or index in (".", ".."):
            raise ValueError(f"index {index!r} must be a plain file name")
        self.root: Final = real_root
        self._root_slash = real_root.rstrip(b"/") + b"/"
        self._index = os.fsencode(index)
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._max_file_size = max_file_size
        self._interval = check_interval
        self._entries: dict[bytes, FileEntry] = {}
        self._body_bytes = 0
        self._hits = 0
        self._misses = 0
        self._rechecks = 0

    def statistics(self) -> FileCacheStatistics:
        return FileCacheStatistics(
            len(self._entries), self._body_bytes, self._hits, self._misses, self._rechecks
        )

    def lookup(self, url_path: bytes, now: float, recheck: bool = False) -> FileEntry | int:
        """The entry for a URL path, or the status to answer (301, 403, 404)."""
        entry = self._entries.get(url_path)
        if entry is not None:
            if not recheck and now - entry.checked < self._interval:
                self._hits += 1
                return entry
            self._rechecks += 1
            self._drop(url_path, entry)
        else:
            self._misses += 1
        found = self._resolve(url_path, now, entry)
        if isinstance(found, FileEntry):
            self._keep(url_path, found)
        return found

    def count_hit(self) -> None:
        """Count a hit the caller served from its own memory of an entry it got here."""
        self._hits += 1

    def open_range(self, body: FileRange) -> int | None:
        """An open descriptor for ``body``'s file, or None if the file changed since."""
        try:
            fd = os.open(body.path, _OPEN_FLAGS)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if _identity(st) != body.identity:
                os.close(fd)
                return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- internals ------------------------------------------------------------

    def _resolve(self, url_path: bytes, now: float, old: FileEntry | None) -> FileEntry | int:
        relative = relative_path(url_path)
        if relative is None:
            return NOT_FOUND
        rel, is_directory = relative
        path = self.root + b"/" + rel if rel else self.root
        if is_directory:
            path += b"/" + self._index
        real = os.path.realpath(path)
        if not real.startswith(self._root_slash):
            return NOT_FOUND  # outside the root (a symlink), or the root itself
        try:
            st = os.stat(real)
        except OSError as exc:
            return FORBIDDEN if exc.errno == errno.EACCES else NOT_FOUND
        if stat.S_ISDIR(st.st_mode):
            return NOT_FOUND if is_directory else MOVED
        if not stat.S_ISREG(st.st_mode):
            return NOT_FOUND
        identity = _identity(st)
        if old is not None and old.real_path == real and old.identity == identity:
            old.checked = now
            return old
        body: bytes | None = None
        if st.st_size <= self._max_file_size and st.st_size <= self._max_bytes:
            try:
                read = _read_small(real, identity)
            except PermissionError:
                return FORBIDDEN
            except OSError as exc:
                return NOT_FOUND if exc.errno in _MISSING else FORBIDDEN
            if read is None:  # changed while we looked: serve from disk, check again soon
                now = float("-inf")
            else:
                body = read
        elif not os.access(real, os.R_OK):
            return FORBIDDEN
        return FileEntry(
            real_path=real,
            identity=identity,
            size=st.st_size,
            mtime=int(st.st_mtime),
            content_type=content_type_for(real).encode("ascii"),
            etag=etag_for(st.st_mtime_ns, st.st_size, st.st_ino),
            last_modified=http_date(int(st.st_mtime)),
            body=body,
            checked=now,
        )

    def _keep(self, url_path: bytes, entry: FileEntry) -> None:
        entries = self._entries
        size = len(entry.body) if entry.body is not None else 0
        while entries and (
            len(entries) >= self._max_entries or self._body_bytes + size > self._max_bytes
        ):
            oldest = next(iter(entries))
            self._drop(oldest, entries[oldest])
        if self._max_entries > 0:
            entries[url_path] = entry
            self._body_bytes += size

    def _drop(self, url_path: bytes, entry: FileEntry) -> None:
        del self._entries[url_path]
        if entry.body is not None:
            self._body_bytes -= len(entry.body)


def _identity(st: os.stat_result) -> Identity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _read_small(path: bytes, identity: Identity) -> bytes | None:
    """The whole file if it is still the one with ``identity``, else None."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        if _identity(os.fstat(fd)) != identity:
            return None
        size = identity[2]
        data = os.read(fd, size + 1) if size else b""
        return data if len(data) == size else None
    finally:
        os.close(fd)
