"""The sans-I/O request parser: whole, byte by byte and pipelined; smuggling shapes; limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioserver.http import (
    NEED_HTTP_DATA,
    ConnectionClosed,
    HttpConnection,
    LocalHttpError,
    Rejected,
    Request,
)
from trioserver.http.parser import Event

GET = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"


def feed_whole(data: bytes, **limits: int) -> list[Event]:
    return HttpConnection(**limits).receive_events(data)


def feed_bytewise(data: bytes, **limits: int) -> list[Event]:
    conn = HttpConnection(**limits)
    events: list[Event] = []
    for i in range(len(data)):
        events += conn.receive_events(data[i : i + 1])
    return events


FEEDERS = [feed_whole, feed_bytewise]


@pytest.mark.parametrize("feed", FEEDERS)
def test_one_request(feed: object) -> None:
    assert callable(feed)
    [event] = feed(GET)
    assert event == Request(b"GET", b"/a?b=1", b"1.1", {b"host": b"x", b"accept": b"*/*"}, True)


@pytest.mark.parametrize("feed", FEEDERS)
def test_trailing_partial_request_waits(feed: object) -> None:
    assert callable(feed)
    events = feed(GET + b"GET /next HTTP/1.1\r\nHo")
    assert [e.target for e in events if isinstance(e, Request)] == [b"/a?b=1"]


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("1.1", None, True),
        ("1.1", "close", False),
        ("1.1", "keep-alive", True),
        ("1.0", None, False),
        ("1.0", "keep-alive", True),
        ("1.0", "close", False),
        ("1.1", "Close", False),
    ],
)
def test_keep_alive_rules(version: str, connection: str | None, keep_alive: bool) -> None:
    head = f"GET / HTTP/{version}\r\nHost: x\r\n" + (
        f"Connection: {connection}\r\n" if connection else ""
    )
    [event] = feed_whole((head + "\r\n").encode())
    assert isinstance(event, Request)
    assert event.keep_alive is keep_alive
    assert event.version == version.encode()


def test_pipelined_requests_come_out_in_order() -> None:
    data = b"".join(f"GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(50))
    events = feed_whole(data)
    assert [e.target for e in events if isinstance(e, Request)] == [
        f"/{i}".encode() for i in range(50)
    ]


def test_next_event_api() -> None:
    conn = HttpConnection()
    assert conn.next_event() is NEED_HTTP_DATA
    conn.receive_data(GET[:10])
    assert conn.next_event() is NEED_HTTP_DATA
    assert conn.in_request
    conn.receive_data(GET[10:] + GET)
    assert isinstance(conn.next_event(), Request)
    assert isinstance(conn.next_event(), Request)
    assert conn.next_event() is NEED_HTTP_DATA
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed(False)
    assert conn.next_event() == ConnectionClosed(False)


def test_eof_in_the_middle_of_a_request() -> None:
    conn = HttpConnection()
    assert conn.receive_events(GET[:5]) == []
    assert conn.receive_events(b"") == [ConnectionClosed(incomplete=True)]
    assert conn.finished
    with pytest.raises(LocalHttpError):
        conn.receive_events(b"more")
    assert conn.receive_events(b"") == []


def test_header_names_are_lower_cased_and_repeats_joined() -> None:
    [event] = feed_whole(
        b'GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\nIF-NONE-MATCH: "e"\r\n\r\n'
    )
    assert isinstance(event, Request)
    assert event.headers == {b"host": b"x", b"x-a": b"1, 2", b"if-none-match": b'"e"'}


# -- what is rejected ------------------------------------------------------------

SMUGGLING = {
    "CL then TE": b"POST / HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
    "TE then CL": b"POST / HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
    "duplicate CL, equal": b"GET / HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    "duplicate CL, different": b"GET / HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
    "CL list": b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\nx",
    "obs-fold space": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",
    "obs-fold tab": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\tfolded\r\n\r\n",
    "TE not chunked": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    "TE chunked twice": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: x\n\n",
    "NUL in value": b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    "NUL in target": b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    "space in target": b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad version": b"GET / HTTP/1.2\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
}


@pytest.mark.parametrize("feed", FEEDERS)
@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_malformed_and_smuggling_shapes_are_400_and_final(feed: object, name: str) -> None:
    assert callable(feed)
    conn = HttpConnection()
    data = GET + SMUGGLING[name] + GET
    events: list[Event] = []
    if feed is feed_whole:
        events = conn.receive_events(data)
    else:
        for i in range(len(data)):
            events += conn.receive_events(data[i : i + 1])
    assert isinstance(events[0], Request)  # the request before the bad one is answered
    assert events[1:] == [conn.error]
    assert conn.error is not None and conn.error.status == 400
    assert conn.finished
    assert conn.receive_events(GET) == []  # sticky: nothing after the error


#: RFC 9112 §3.2: Host is required in HTTP/1.1 and must appear once; a request target
#: has no fragment.
BAD_HOST_OR_TARGET = {
    "HTTP/1.1 without Host": b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "two Host fields": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "two equal Host fields": b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
    "two Host fields in HTTP/1.0": b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
    "Host with a path": b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "Host with userinfo": b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
    "Host list": b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n",
    "fragment": b"GET /a.txt#top HTTP/1.1\r\nHost: x\r\n\r\n",
    "fragment after a query": b"GET /a.txt?q=1#top HTTP/1.1\r\nHost: x\r\n\r\n",
    "fragment in absolute form": b"GET http://x/a.txt#top HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("feed", FEEDERS)
@pytest.mark.parametrize("name", sorted(BAD_HOST_OR_TARGET))
def test_host_and_fragment_rules_are_400_before_any_body(feed: object, name: str) -> None:
    assert callable(feed)
    events = feed(GET + BAD_HOST_OR_TARGET[name] + GET)
    assert isinstance(events[0], Request)
    assert len(events) == 2 and isinstance(events[1], Rejected)
    assert events[1].status == 400


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.0\r\n\r\n",  # HTTP/1.0 needs no Host
        b"GET / HTTP/1.1\r\nHost:\r\n\r\n",  # empty: a target without an authority
        b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: xn--bcher-kva.example\r\n\r\n",
    ],
)
def test_valid_hosts_are_accepted(head: bytes) -> None:
    [event] = feed_whole(head)
    assert isinstance(event, Request)


@pytest.mark.parametrize("feed", FEEDERS)
def test_request_line_limit_is_414(feed: object) -> None:
    assert callable(feed)
    ok = b"GET /" + b"a" * 99 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert isinstance(feed(ok, max_request_line=100)[0], Request)
    too_long = b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    [event] = feed(too_long, max_request_line=100)
    assert isinstance(event, Rejected) and event.status == 414


def test_request_line_limit_stops_reading_early() -> None:
    conn = HttpConnection(max_request_line=100)
    events = conn.receive_events(b"GET /" + b"a" * 200)  # no end of line yet
    assert [e.status for e in events if isinstance(e, Rejected)] == [414]


@pytest.mark.parametrize("feed", FEEDERS)
def test_header_size_limit_is_431(feed: object) -> None:
    assert callable(feed)
    many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-%d: %s\r\n" % (i, b"v" * 50) for i in range(40)
    )
    [event] = feed(many + b"\r\n", max_header_size=1024)
    assert isinstance(event, Rejected) and event.status == 431
    assert isinstance(feed(many + b"\r\n", max_header_size=4096)[0], Request)


def test_one_endless_header_is_431_without_the_end_of_headers() -> None:
    """A value that never ends is caught while it arrives, not buffered forever."""
    conn = HttpConnection(max_header_size=1024)
    events = conn.receive_events(b"GET / HTTP/1.1\r\nHost: x\r\nCookie: ")
    for _ in range(100):
        events += conn.receive_events(b"x" * 100)
        if events:
            break
    assert [e.status for e in events if isinstance(e, Rejected)] == [431]


def test_declared_body_over_the_cap_is_413_before_it_arrives() -> None:
    [event] = feed_whole(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100001\r\n\r\n", max_body_size=100000
    )
    assert isinstance(event, Rejected) and event.status == 413


def test_chunked_body_over_the_cap_is_413() -> None:
    body = b"400\r\n" + b"a" * 1024 + b"\r\n"
    conn = HttpConnection(max_body_size=4096)
    events = conn.receive_events(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    for _ in range(5):
        events += conn.receive_events(body)
    assert [e.status for e in events if isinstance(e, Rejected)] == [413]


@pytest.mark.parametrize("feed", FEEDERS)
def test_small_bodies_are_read_and_dropped_keeping_the_connection_in_sync(feed: object) -> None:
    """GET with a body is served as if bodiless; POST's body is read (the policy says 405)."""
    assert callable(feed)
    data = (
        b"GET /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    events = feed(data)
    assert [(e.method, e.target) for e in events if isinstance(e, Request)] == [
        (b"GET", b"/1"),
        (b"POST", b"/2"),
        (b"GET", b"/3"),
    ]


@pytest.mark.parametrize("line", [b"GET / HTTP/2.0", b"GET /", b"GET / HTTP/0.9"])
def test_other_http_versions_are_505(line: bytes) -> None:
    [event] = feed_whole(line + b"\r\n\r\n")
    assert isinstance(event, Rejected) and event.status == 505


def test_nothing_is_parsed_after_a_closing_request() -> None:
    events = feed_whole(
        b"GET /1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert [e.target for e in events if isinstance(e, Request)] == [b"/1"]
    assert not any(isinstance(e, Rejected) for e in events)


@pytest.mark.parametrize(
    "data",
    [
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n\x16\x03",
    ],
)
def test_upgrade_and_connect_are_answered_then_closed(data: bytes) -> None:
    conn = HttpConnection()
    [event] = conn.receive_events(data)
    assert isinstance(event, Request) and not event.keep_alive
    assert conn.finished and conn.error is None


def test_bad_limits_are_value_errors() -> None:
    with pytest.raises(ValueError, match="max_header_size"):
        HttpConnection(max_header_size=-1)


# -- fuzz ------------------------------------------------------------------------------


def _check_event_stream(events: list[Event]) -> None:
    for i, event in enumerate(events):
        assert isinstance(event, Request | Rejected | ConnectionClosed)
        if isinstance(event, Rejected):
            assert event.status in {400, 413, 414, 431, 505}
            assert i == len(events) - 1 or events[i + 1 :] == [ConnectionClosed(False)]


@settings(max_examples=400, deadline=None)
@given(chunks=st.lists(st.binary(max_size=200), max_size=8))
def test_random_bytes_only_ever_produce_events(chunks: list[bytes]) -> None:
    conn = HttpConnection(max_request_line=256, max_header_size=512, max_body_size=256)
    events: list[Event] = []
    for chunk in chunks:
        if chunk:
            events += conn.receive_events(chunk)
    events += conn.receive_events(b"")
    _check_event_stream(events)


_token = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(str.strip)


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    out = []
    for _ in range(draw(st.integers(1, 4))):
        method = draw(st.sampled_from(["GET", "HEAD", "POST", "DELETE"]))
        path = "/" + draw(st.text("abc/%.-_~0123456789", max_size=20))
        headers = draw(st.lists(st.tuples(_token, _value), max_size=5))
        body = draw(st.binary(max_size=20)) if method == "POST" else b""
        lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        out.append(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return b"".join(out)


@settings(max_examples=200, deadline=None)
@given(data=_requests(), cuts=st.lists(st.integers(0, 400), max_size=10))
def test_any_split_gives_the_same_events(data: bytes, cuts: list[int]) -> None:
    whole = HttpConnection().receive_events(data)
    conn = HttpConnection()
    pieces: list[Event] = []
    start = 0
    for cut in sorted({c for c in cuts if 0 < c < len(data)}):
        pieces += conn.receive_events(data[start:cut])
        start = cut
    pieces += conn.receive_events(data[start:])
    assert pieces == whole
    _check_event_stream(whole)


def test_between_feeds_the_parser_keeps_no_request_alive() -> None:
    """An idle keep-alive connection holds no events of its last request (memory)."""
    conn = HttpConnection()
    (request,) = conn.receive_events(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(request, Request)
    assert conn._events == [] and conn._pending is None  # no deque unless next_event is used
    (second,) = conn.receive_events(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(second, Request) and second.target == b"/b"


def test_the_event_api_still_gives_every_event_in_order() -> None:
    conn = HttpConnection()
    conn.receive_data(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n")
    first = conn.next_event()
    assert isinstance(first, Request) and first.target == b"/a"
    assert conn.next_event() is NEED_HTTP_DATA
    conn.receive_data(b"Host: x\r\n\r\n")
    second = conn.next_event()
    assert isinstance(second, Request) and second.target == b"/b"
    assert conn.next_event() is NEED_HTTP_DATA
