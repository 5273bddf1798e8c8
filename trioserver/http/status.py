"""HTTP status codes this server sends: reason phrase, error page, connection rule.

Every status the server can answer lives in :data:`STATUSES`; the policy and the
adapter look rules up here instead of repeating them. ``closes`` marks the
statuses after which the connection cannot be trusted to stay in sync (the
request was malformed, too large or incomplete, or the server is failing), so
the response carries ``Connection: close`` and the adapter closes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs

__all__ = ["STATUSES", "Status", "error_page", "status_line"]


@attrs.frozen(slots=True)
class Status:
    """One status code's fixed facts."""

    code: int
    reason: str
    #: The connection closes after this response whatever the client asked.
    closes: bool = False
    #: Why the server sends it (shown on the error page).
    explanation: str = ""


def _table(*rows: Status) -> Mapping[int, Status]:
    return {row.code: row for row in rows}


STATUSES: Final[Mapping[int, Status]] = _table(
    Status(200, "OK"),
    Status(206, "Partial Content"),
    Status(301, "Moved Permanently", explanation="The document is a directory; follow Location."),
    Status(304, "Not Modified"),
    Status(400, "Bad Request", True, "The request could not be parsed."),
    Status(403, "Forbidden", False, "You may not read this document."),
    Status(404, "Not Found", False, "No document at this address."),
    Status(405, "Method Not Allowed", False, "Only GET and HEAD are served here."),
    Status(408, "Request Timeout", True, "The request headers did not arrive in time."),
    Status(413, "Content Too Large", True, "The request body is larger than allowed."),
    Status(414, "URI Too Long", True, "The request line is longer than allowed."),
    Status(416, "Range Not Satisfiable", False, "The requested range is outside the document."),
    Status(426, "Upgrade Required", True, "This address speaks WebSocket (version 13) only."),
    Status(431, "Request Header Fields Too Large", True, "The request headers are too large."),
    Status(500, "Internal Server Error", True, "The server failed; the failure is logged."),
    Status(503, "Service Unavailable", True, "The server is full; try again shortly."),
    Status(505, "HTTP Version Not Supported", True, "Only HTTP/1.0 and HTTP/1.1 are served."),
)


def status_line(code: int) -> bytes:
    """``HTTP/1.1 404 Not Found\\r\\n`` (always 1.1: the highest version we speak)."""
    return f"HTTP/1.1 {code} {STATUSES[code].reason}\r\n".encode("ascii")


def error_page(code: int) -> bytes:
    """The short HTML body sent with an error status."""
    status = STATUSES[code]
    return (
        f"<!doctype html>\n<html><head><title>{code} {status.reason}</title></head>\n"
        f"<body><h1>{code} {status.reason}</h1>\n<p>{status.explanation}</p>\n"
        "<hr><p>trioserver</p></body></html>\n"
    ).encode("ascii")
