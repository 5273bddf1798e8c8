"""Sans-I/O HTTP/1.1 request parsing over httptools (llhttp), shaped like h11's ``Connection``.

::

    conn = HttpConnection(max_request_line=8192, max_header_size=16384, max_body_size=16384)
    for event in conn.receive_events(chunk):    # b"" means the peer sent EOF
        ...                                     # Request, Rejected or ConnectionClosed

``receive_data`` + ``next_event`` is the one-event-at-a-time form (``NEED_HTTP_DATA`` when
more bytes are needed); ``receive_events`` is the batch form the adapter uses: one call
per receive returns every event those bytes completed, so pipelined requests that
arrive together are answered together, in order.

A peer's mistake is an event, not an exception: ``Rejected`` carries the status to
answer (400, 413, 414, 431, 505). It comes after the requests that preceded it on
the wire, which deserve their answers, and it is the last event: the connection is
then finished (``error`` keeps it) and further bytes are ignored. The same holds
after a request that asked to be the last one (HTTP/1.0 without keep-alive,
``Connection: close``) or an Upgrade/CONNECT request: after an upgrade the bytes
belong to another protocol, so the request carries ``upgrade=True`` and the bytes
that followed its head wait in :attr:`HttpConnection.trailing_data` (the adapter
hands both to the WebSocket handshake, or closes). Only misuse by the caller
raises (:class:`LocalHttpError`, a ``trioserver.errors.LocalProtocolError``).

What is rejected, and why (request smuggling needs two parsers to disagree about
where a message ends, so every ambiguous framing closes the connection):

======================================================  ======  ==========================
shape                                                   status  caught by
======================================================  ======  ==========================
malformed request line or header, bare LF, NUL, obs-fold  400   llhttp (strict mode)
Content-Length together with Transfer-Encoding            400   llhttp, and checked here
two Content-Length fields (equal or not)                  400   llhttp, and checked here
Transfer-Encoding other than a final ``chunked``          400   llhttp
request target longer than ``max_request_line``           414   here (``on_url``)
header fields larger than ``max_header_size`` in total    431   here (see below)
body (declared or received) over ``max_body_size``        413   here
HTTP version other than 1.0 / 1.1                         505   here
HTTP/1.1 without Host; two Host fields; a malformed Host  400   here (RFC 9112 §3.2)
a fragment (``#``) in the request target                  400   here (RFC 9112 §3.2)
======================================================  ======  ==========================

Host and fragments are checked once the head is complete, before any body. RFC 9112
§3.2 requires the 400 for Host ("MUST respond with a 400"). The request-target
grammar there (origin-form, absolute-form, ...) has no fragment: a client strips it
before sending, so one on the wire is a malformed line, and §3 lets the server answer
400. Refusing rather than stripping it, as with every other ambiguity here: a proxy
in front that keeps the fragment in its cache key while this server drops it is
the kind of disagreement cache poisoning is made of.

Bodies: this server only reads, so a body is read and thrown away, never kept. A
GET or HEAD with a small body is served as if it had none (RFC 9110 §9.3.1 gives
such content no meaning, and reading it keeps the connection in sync); another
method gets 405 from the policy after its body is read. A declared Content-Length
over the cap is refused as soon as the field is read, before the body arrives.

Header size: httptools hands over only complete header fields, and keeps a field
that is still arriving inside itself. The size counted is therefore the complete
fields (name + value + 4) plus every byte fed while no field completed; a head that
ends in the middle of a large receive may carry one receive's worth of bytes past
the cap before it is caught, so memory stays bounded by the cap plus one receive.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Mapping
from typing import Final, NoReturn

import attrs
import httptools

from ..errors import LocalProtocolError

__all__ = [
    "NEED_HTTP_DATA",
    "ConnectionClosed",
    "Event",
    "HttpConnection",
    "LocalHttpError",
    "NeedHttpData",
    "Rejected",
    "Request",
]


class LocalHttpError(LocalProtocolError):
    """The caller misused :class:`HttpConnection` (our bug, not the peer's)."""


class NeedHttpData(enum.Enum):
    """The type of the :data:`NEED_HTTP_DATA` sentinel."""

    NEED_HTTP_DATA = "NEED_HTTP_DATA"

    def __repr__(self) -> str:
        return "NEED_HTTP_DATA"


NEED_HTTP_DATA: Final = NeedHttpData.NEED_HTTP_DATA


# Not frozen, on purpose: a frozen attrs class costs three times as much to build
# (object.__setattr__ per field), and one is built per request. Treat it as a value.
@attrs.define(slots=True)
class Request:
    """One complete request head (its body, if any, was read and discarded)."""

    method: bytes
    #: The raw request target, as sent (``/a%20b?x=1``).
    target: bytes
    #: ``b"1.0"`` or ``b"1.1"``.
    version: bytes
    #: Lower-case field name -> value; repeated fields joined with ``b", "``.
    headers: Mapping[bytes, bytes]
    #: The client allows another request on this connection after this one.
    keep_alive: bool
    #: The request asked to switch protocols (``Connection: upgrade`` with ``Upgrade``).
    upgrade: bool = False


@attrs.frozen(slots=True)
class Rejected:
    """The peer broke the protocol: answer ``status`` and close the connection."""

    status: int
    detail: str


@attrs.frozen(slots=True)
class ConnectionClosed:
    """The peer sent EOF; ``incomplete`` if it stopped in the middle of a request."""

    incomplete: bool = False


Event = Request | Rejected | ConnectionClosed


class _State(enum.Enum):
    IDLE = "idle"  # between requests
    HEAD = "head"  # request line and headers arriving
    BODY = "body"  # body bytes arriving
    DONE = "done"  # the last request was seen (close, upgrade, EOF): ignore the rest
    ERROR = "error"  # a Rejected was emitted


# Module constants: reading an Enum member through its class costs ~200 ns on
# Python 3.11, and the callbacks below test the state several times per request.
_IDLE: Final = _State.IDLE
_HEAD: Final = _State.HEAD
_BODY: Final = _State.BODY
_DONE: Final = _State.DONE
_ERROR: Final = _State.ERROR
#: ``HttpConnection._events`` between feeds: shared, and nothing appends to it (the
#: callbacks run only inside ``feed_data``, which has a list of its own by then).
_NO_EVENTS: Final[list[Event]] = []


class _Reject(Exception):
    """Raised inside a parser callback to stop llhttp; the event is in ``conn._error``."""


_VERSIONS: Final[dict[str, bytes]] = {"1.1": b"1.1", "1.0": b"1.0"}


class HttpConnection:
    """Server-side request parser: bytes in, :data:`Event` s out. Imports no trio."""

    __slots__ = (
        "_body_bytes",
        "_closed",
        "_error",
        "_events",
        "_head_bytes",
        "_headers",
        "_max_body",
        "_max_header",
        "_max_line",
        "_parser",
        "_pending",
        "_progress",
        "_stall",
        "_state",
        "_url",
        "requests_started",
        "trailing_data",
    )

    def __init__(
        self,
        *,
        max_request_line: int = 8192,
        max_header_size: int = 16384,
        max_body_size: int = 16384,
    ) -> None:
        # One of these is made per connection: the common case is checked in one line.
        if not (
            type(max_request_line) is int
            and type(max_header_size) is int
            and type(max_body_size) is int
            and min(max_request_line, max_header_size, max_body_size) >= 0
        ):
            for name, value in (
                ("max_request_line", max_request_line),
                ("max_header_size", max_header_size),
                ("max_body_size", max_body_size),
            ):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"{name}={value!r} must be a non-negative integer")
        self._max_line = max_request_line
        self._max_header = max_header_size
        self._max_body = max_body_size
        self._parser = httptools.HttpRequestParser(self)  # its callbacks: the on_* below
        self._state = _IDLE
        #: The events of the feed under way (callbacks append to it); between feeds
        #: the shared empty list, so an idle connection keeps no request alive.
        self._events: list[Event] = _NO_EVENTS
        #: What ``next_event`` still has to give (made on first ``receive_data``:
        #: the adapter uses ``receive_events``, and an empty deque is 600 bytes).
        self._pending: deque[Event] | None = None
        self._error: Rejected | None = None
        self._closed = False
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._head_bytes = 0
        self._body_bytes = 0
        self._stall = 0
        self._progress = False
        #: How many requests have begun (first byte seen); lets the adapter tell a
        #: new partial request from the one that was already arriving.
        self.requests_started = 0
        #: After an upgrade request: the bytes that came after its head (the new protocol's).
        self.trailing_data = b""

    # -- state the adapter reads ----------------------------------------------

    @property
    def in_request(self) -> bool:
        """A request has started arriving and is not complete yet."""
        return self._state is _HEAD or self._state is _BODY

    @property
    def finished(self) -> bool:
        """No further request will come from this connection (close, error or EOF)."""
        return self._state is _DONE or self._state is _ERROR

    @property
    def error(self) -> Rejected | None:
        """The sticky rejection, once the peer broke the protocol."""
        return self._error

    # -- h11-shaped API ---------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Parse bytes from the peer (``b""`` is EOF); take the events with :meth:`next_event`."""
        events = self.receive_events(data)
        if self._pending is None:
            self._pending = deque(events)
        else:
            self._pending.extend(events)

    def next_event(self) -> Event | NeedHttpData:
        """The next event, or :data:`NEED_HTTP_DATA`."""
        if self._pending:
            return self._pending.popleft()
        if self._closed:
            return ConnectionClosed(False)
        return NEED_HTTP_DATA

    def receive_events(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Parse ``data`` (``b""`` is EOF) and return every event it completed, in order."""
        if self._closed:
            if data:
                raise LocalHttpError("receive_events() called with data after EOF")
            return []
        if not data:
            self._closed = True
            incomplete = self.in_request
            if not self.finished:
                self._state = _DONE
            return [ConnectionClosed(incomplete)]
        if self._state is _DONE or self._state is _ERROR:
            return []
        events = self._events = []
        self._progress = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # Upgrade or CONNECT: what follows is not HTTP; the adapter decides.
            self._finish_after_last_request(upgrade=self._parser.should_upgrade())
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            self.trailing_data = bytes(data[offset:])
        except httptools.HttpParserError as exc:
            # The callbacks moved the state; mypy cannot see that, so ask a method.
            if not self.finished:
                rejected = self._error or Rejected(400, f"malformed request: {exc}")
                self._reject(rejected)
        else:
            if self._state is _HEAD:
                if self._progress:
                    self._stall = 0
                else:
                    self._stall += len(data)
                    if self._head_bytes + self._stall > self._max_header:
                        self._reject(_too_large_head(self._max_header))
        self._events = _NO_EVENTS
        return events

    # -- internals --------------------------------------------------------------

    def _reject(self, rejected: Rejected) -> None:
        self._error = rejected
        self._state = _ERROR
        self._events.append(rejected)

    def _finish_after_last_request(self, *, upgrade: bool = False) -> None:
        events = self._events
        if events and isinstance(events[-1], Request):
            events[-1] = attrs.evolve(events[-1], keep_alive=False, upgrade=upgrade)
        self._state = _DONE

    def _fail(self, status: int, detail: str) -> NoReturn:
        self._error = Rejected(status, detail)
        raise _Reject(detail)

    # -- httptools callbacks (called from inside feed_data) ----------------------

    def _on_message_begin(self) -> None:
        if self._state is _DONE:
            raise _Reject("data after the last request")
        self._state = _HEAD
        self.requests_started += 1
        self._progress = True

    def _on_url(self, part: bytes) -> None:
        url = self._url = self._url + part if self._url else part
        self._progress = True
        if len(url) > self._max_line:
            self._fail(414, f"request target longer than {self._max_line} bytes")

    def _on_header(self, name: bytes, value: bytes) -> None:
        self._progress = True
        size = self._head_bytes = self._head_bytes + len(name) + len(value) + 4
        if size > self._max_header:
            self._fail(431, _too_large_head(self._max_header).detail)
        name = name.lower()
        headers = self._headers
        if name in _FRAMING:
            if name in headers:
                self._fail(400, f"duplicate {name.decode()} field")
            if _OTHER_FRAMING[name] in headers:
                self._fail(400, "Content-Length together with Transfer-Encoding")
            if name == b"content-length" and int(value) > self._max_body:
                # llhttp has checked the digits; refuse before the body arrives
                self._fail(413, f"declared body of {int(value)} bytes is over {self._max_body}")
            headers[name] = value
        elif name in headers:
            if name == b"host":
                self._fail(400, "two Host fields")
            headers[name] += b", " + value
        else:
            headers[name] = value

    def _on_headers_complete(self) -> None:
        if b"#" in self._url:
            self._fail(400, "a fragment (#...) in the request target")
        host = self._headers.get(b"host")
        if host is None:
            if self._parser.get_http_version() == "1.1":
                self._fail(400, "an HTTP/1.1 request without a Host field")
        elif _HOST.fullmatch(host) is None:
            self._fail(400, "a malformed Host field")

    def _on_body(self, chunk: bytes) -> None:
        self._state = _BODY
        size = self._body_bytes = self._body_bytes + len(chunk)
        if size > self._max_body:
            self._fail(413, f"request body is over {self._max_body} bytes")

    def _on_message_complete(self) -> None:
        parser = self._parser
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            self._fail(505, f"HTTP version {parser.get_http_version()!r} is not served")
        keep_alive = parser.should_keep_alive()
        self._events.append(
            Request(parser.get_method(), self._url, version, self._headers, keep_alive)
        )
        self._state = _IDLE if keep_alive else _DONE
        self._url = b""
        self._headers = {}
        self._head_bytes = self._body_bytes = 0

    # httptools looks its callbacks up by these names on the object it is given.
    on_message_begin = _on_message_begin
    on_url = _on_url
    on_header = _on_header
    on_headers_complete = _on_headers_complete
    on_body = _on_body
    on_message_complete = _on_message_complete


#: ``uri-host [ ":" port ]`` (RFC 9110 §7.2, RFC 3986 §3.2.2): an IP literal in brackets
#: or a reg-name / IPv4 address, possibly empty (a target without an authority).
_HOST: Final = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
_FRAMING: Final = frozenset((b"content-length", b"transfer-encoding"))
_OTHER_FRAMING: Final = {
    b"content-length": b"transfer-encoding",
    b"transfer-encoding": b"content-length",
}


def _too_large_head(limit: int) -> Rejected:
    return Rejected(431, f"request header fields larger than {limit} bytes")
