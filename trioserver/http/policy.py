"""The static site: a parsed request in, the response to send out. No trio, no sockets.

::

    site = StaticSite("/srv/www")
    response = site.respond(request)        # Response(status, head, body, close)
    response = site.error(408)              # statuses the adapter decides (408, 503, ...)

``head`` is the status line and headers, ready to send; ``body`` is bytes (maybe
empty) or a :class:`~trioserver.http.files.FileRange` to send from disk; ``close``
says the connection must close after this response. The adapter never looks
inside a response, so every protocol rule lives here and in the tables it uses.

Rules, in the order they are applied:

1. Only GET and HEAD (405 with ``Allow``). HEAD gets GET's headers and no body.
2. The target's path must map inside the document root (``paths.py``,
   ``files.py``): 404 otherwise (no directory listing; a directory without its
   trailing slash gets 301 to the slash, as nginx does).
3. ``If-None-Match`` (weak compare), else ``If-Modified-Since`` -> 304; a date
   later than the server's clock is ignored (RFC 9110 §13.1.3).
4. GET with one ``bytes`` range (honoured only if ``If-Range`` matches, when
   given) -> 206, or 416 when it starts past the end.
5. Otherwise 200 with ``Accept-Ranges: bytes``.

Speed: almost everything in a head is fixed per file, so the fixed part is built
once per cached file, and ``Date`` once per second. On top of that, a plain 200
(no conditional or range field) is remembered whole, keyed by the request's
method, target, version and keep-alive, until the ``Date`` second changes: a
hot request is then one dict lookup and a check that the file's cache entry is
still trusted, and returns the same immutable :class:`Response` object. The
table is emptied every second and holds at most ``cache_max_entries``
responses, so odd targets (``/?1``, ``/?2``, ...) cannot grow it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs

from .conditional import UNSATISFIABLE, etag_matches, http_date, modified_since, parse_range
from .files import MOVED, FileCache, FileCacheStatistics, FileEntry, FileRange
from .parser import Request
from .paths import split_target
from .status import STATUSES, error_page, status_line

if TYPE_CHECKING:
    from trioserver.config import HttpSettings

__all__ = ["BUNDLED_SITE", "Response", "StaticSite", "service_unavailable"]

#: The small site served when no document root is configured.
BUNDLED_SITE: Final = Path(__file__).with_name("site")

SERVER: Final = b"Server: trioserver\r\n"
ALLOW: Final = b"Allow: GET, HEAD\r\n"
_HTML: Final = b"text/html; charset=utf-8"

#: (HTTP version, client keeps alive) -> the Connection line (HTTP/1.1 keeps alive
#: by default, HTTP/1.0 closes by default; say it only where it differs, and
#: always say close when closing).
_CONNECTION: Final = {
    (b"1.1", True): b"",
    (b"1.1", False): b"Connection: close\r\n",
    (b"1.0", True): b"Connection: keep-alive\r\n",
    (b"1.0", False): b"Connection: close\r\n",
}
_CLOSE: Final = b"Connection: close\r\n"
_CONDITIONAL: Final = (b"if-none-match", b"if-modified-since", b"range")


# Not frozen for the same reason as Request: one is built per request.
@attrs.define(slots=True)
class Response:
    """One response, decided: send ``head``, then ``body``; close after it if ``close``."""

    status: int
    head: bytes
    body: bytes | FileRange
    close: bool

    @property
    def body_length(self) -> int:
        body = self.body
        return body.length if isinstance(body, FileRange) else len(body)


class StaticSite:
    """Serves the files under one document root (see the module docstring for the rules)."""

    def __init__(
        self,
        root: str | os.PathLike[str] = BUNDLED_SITE,
        *,
        index: str = "index.html",
        cache_max_entries: int = 1024,
        cache_max_bytes: int = 4 * 1024 * 1024,
        cache_max_file_size: int = 64 * 1024,
        cache_check_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.files: Final = FileCache(
            root,
            index=index,
            max_entries=cache_max_entries,
            max_bytes=cache_max_bytes,
            max_file_size=cache_max_file_size,
            check_interval=cache_check_interval,
        )
        self._clock = clock
        self._interval = cache_check_interval
        self._max_responses = cache_max_entries
        #: (method, target, version, keep_alive) -> (response, its file's entry), for
        #: the current Date second only (see the module docstring).
        self._responses: dict[tuple[bytes, bytes, bytes, bool], tuple[Response, FileEntry]] = {}
        self._date_second = -1
        self._date_line = b""
        self._error_heads = {code: _error_head(code) for code in STATUSES if code >= 400}
        self._error_pages = {code: error_page(code) for code in STATUSES if code >= 400}

    @classmethod
    def from_settings(
        cls, settings: HttpSettings, *, clock: Callable[[], float] = time.time
    ) -> StaticSite:
        """The site ``[http]`` describes (the bundled site when document_root is empty)."""
        return cls(
            settings.document_root or BUNDLED_SITE,
            index=settings.index,
            cache_max_entries=settings.cache_max_entries,
            cache_max_bytes=settings.cache_max_bytes,
            cache_max_file_size=settings.cache_max_file_size,
            cache_check_interval=settings.cache_check_interval,
            clock=clock,
        )

    @property
    def root(self) -> bytes:
        """The document root, symlinks resolved."""
        return self.files.root

    def statistics(self) -> FileCacheStatistics:
        return self.files.statistics()

    def open_range(self, body: FileRange) -> int | None:
        """Open ``body``'s file for sending; None if it changed (ask :meth:`respond` again
        with ``recheck=True``). The caller closes the descriptor."""
        return self.files.open_range(body)

    # -- responses ----------------------------------------------------------------

    def respond(self, request: Request, *, recheck: bool = False) -> Response:
        """The response to one request. ``recheck`` ignores the cache's trust interval."""
        method = request.method
        headers = request.headers
        conditional = False
        if headers:
            for name in _CONDITIONAL:
                if name in headers:
                    conditional = True
                    break
        now = self._clock()
        if int(now) != self._date_second:
            self._date(now)  # also empties the response table
        elif not conditional and not recheck:
            key = (method, request.target, request.version, request.keep_alive)
            hit = self._responses.get(key)
            if hit is not None and now - hit[1].checked < self._interval:
                self.files.count_hit()
                return hit[0]
        if method != b"GET" and method != b"HEAD":
            return self.error(405, request)
        split = split_target(request.target)
        if split is None:
            return self.error(400, request)
        path, query = split
        found = self.files.lookup(path, now, recheck)
        if isinstance(found, int):
            if found == MOVED:
                return self._moved(path, query, request)
            return self.error(found, request)
        if conditional:
            return self._conditional(found, request, now)
        if method == b"HEAD":
            body: bytes | FileRange = b""
        else:
            body = found.body if found.body is not None else _whole(found)
        heads = found.heads
        if heads is None:
            heads = found.heads = _fixed_heads(found)
        keep_alive = request.keep_alive
        response = Response(
            200,
            b"".join(
                (heads[0], self._date_line, _CONNECTION[request.version, keep_alive], b"\r\n")
            ),
            body,
            not keep_alive,
        )
        responses = self._responses
        if len(responses) < self._max_responses:
            responses[method, request.target, request.version, keep_alive] = (response, found)
        return response

    def error(
        self, status: int, request: Request | None = None, *, headers: bytes = b""
    ) -> Response:
        """An error response with its short HTML page (no body for a HEAD request).

        Without a request (the parser or the adapter decided), and for statuses that
        close (``STATUSES[status].closes``), the connection closes after it.
        ``headers``: more header lines (each ending in CRLF), such as a 426's ``Upgrade``.
        """
        close = request is None or not request.keep_alive or STATUSES[status].closes
        connection = _CLOSE if close or request is None else _CONNECTION[request.version, True]
        head = b"".join(
            (self._error_heads[status], self._date(self._clock()), connection, headers, b"\r\n")
        )
        head_only = request is not None and request.method == b"HEAD"
        return Response(status, head, b"" if head_only else self._error_pages[status], close)

    def _moved(self, path: bytes, query: bytes, request: Request) -> Response:
        # Collapse leading slashes: "//host/dir" must not become a protocol-relative URL.
        location = b"/" + path.lstrip(b"/") + b"/" + query
        page = error_page(301)
        head = b"".join(
            (
                status_line(301),
                SERVER,
                b"Location: " + location + b"\r\n",
                b"Content-Type: " + _HTML + b"\r\n",
                b"Content-Length: %d\r\n" % len(page),
                self._date(self._clock()),
                _CONNECTION[request.version, request.keep_alive],
                b"\r\n",
            )
        )
        body = b"" if request.method == b"HEAD" else page
        return Response(301, head, body, not request.keep_alive)

    def _conditional(self, entry: FileEntry, request: Request, now: float) -> Response:
        headers = request.headers
        keep_alive = request.keep_alive
        tail = self._date(now) + _CONNECTION[request.version, keep_alive] + b"\r\n"
        if_none_match = headers.get(b"if-none-match")
        if if_none_match is not None:
            not_modified = etag_matches(if_none_match, entry.etag)
        else:
            since = headers.get(b"if-modified-since")
            not_modified = since is not None and (
                (since == entry.last_modified and entry.mtime <= now)
                or not modified_since(since, entry.mtime, now)
            )
        if not_modified:
            return Response(304, _head_304(entry) + tail, b"", not keep_alive)
        is_get = request.method == b"GET"
        range_header = headers.get(b"range")
        if range_header is not None and is_get:
            if_range = headers.get(b"if-range")
            if if_range is None or if_range in (entry.etag, entry.last_modified):
                wanted = parse_range(range_header, entry.size)
                if wanted is UNSATISFIABLE:
                    page = self._error_pages[416]
                    head = b"".join(
                        (
                            self._error_heads[416],
                            b"Content-Range: bytes */%d\r\n" % entry.size,
                            tail,
                        )
                    )
                    return Response(416, head, page, not keep_alive)
                if wanted is not None:
                    first, last = wanted
                    length = last - first + 1
                    head = b"".join(
                        (
                            status_line(206),
                            SERVER,
                            b"Content-Type: " + entry.content_type + b"\r\n",
                            b"Content-Length: %d\r\n" % length,
                            b"Content-Range: bytes %d-%d/%d\r\n" % (first, last, entry.size),
                            b"Last-Modified: " + entry.last_modified + b"\r\n",
                            b"ETag: " + entry.etag + b"\r\n",
                            tail,
                        )
                    )
                    part: bytes | FileRange
                    if entry.body is not None:
                        part = entry.body[first : last + 1]
                    else:
                        part = FileRange(entry.real_path, first, length, entry.identity)
                    return Response(206, head, part, not keep_alive)
        if is_get:
            body: bytes | FileRange = entry.body if entry.body is not None else _whole(entry)
        else:
            body = b""
        return Response(200, _head_200(entry) + tail, body, not keep_alive)

    def _date(self, now: float) -> bytes:
        second = int(now)
        if second != self._date_second:
            self._date_line = b"Date: " + http_date(second) + b"\r\n"
            self._date_second = second
            self._responses.clear()  # they carry the old Date
        return self._date_line


def _head_200(entry: FileEntry) -> bytes:
    heads = entry.heads
    if heads is None:
        heads = entry.heads = _fixed_heads(entry)
    return heads[0]


def _head_304(entry: FileEntry) -> bytes:
    heads = entry.heads
    if heads is None:
        heads = entry.heads = _fixed_heads(entry)
    return heads[1]


def _fixed_heads(entry: FileEntry) -> tuple[bytes, bytes]:
    """The parts of a file's 200 and 304 heads that change only when the file does."""
    validators = b"Last-Modified: " + entry.last_modified + b"\r\nETag: " + entry.etag + b"\r\n"
    head_200 = b"".join(
        (
            status_line(200),
            SERVER,
            b"Content-Type: " + entry.content_type + b"\r\n",
            b"Content-Length: %d\r\n" % entry.size,
            validators,
            b"Accept-Ranges: bytes\r\n",
        )
    )
    return head_200, status_line(304) + SERVER + validators


def service_unavailable(now: float) -> bytes:
    """A whole 503 response (head and page) that closes, for a worker with no room."""
    page = error_page(503)
    return b"".join(
        (
            _error_head(503),
            b"Retry-After: 1\r\n",
            b"Date: " + http_date(now) + b"\r\n",
            _CLOSE,
            b"\r\n",
            page,
        )
    )


def _whole(entry: FileEntry) -> FileRange:
    return FileRange(entry.real_path, 0, entry.size, entry.identity)


def _error_head(code: int) -> bytes:
    head = (
        status_line(code)
        + SERVER
        + b"Content-Type: "
        + _HTML
        + b"\r\n"
        + b"Content-Length: %d\r\n" % len(error_page(code))
    )
    return head + ALLOW if code == 405 else head
