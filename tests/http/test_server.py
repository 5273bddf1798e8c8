"""The trio adapter: pipelining, timeouts in virtual time, failures.

Every test that uses the default connection runs twice (the ``transport``
fixture): over an in-memory stream (``serve_http_connection``) and over a real
loopback TCP connection whose server end is a raw non-blocking socket
(``serve_http_socket``). Tests that need a special stream run over streams only.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from trioserver.config import HttpSettings
from trioserver.http import (
    Request,
    Response,
    StaticSite,
    refuse_http_connection,
    serve_http_socket,
)
from trioserver.http import serve_http_connection as serve
from trioserver.http.server import FAREWELL_TIMEOUT

from .conftest import BIG_SIZE, INDEX, ResponseReader, parse_responses, raw_request

HEADER_TIMEOUT = 10.0
KEEP_ALIVE_TIMEOUT = 15.0
SEND_TIMEOUT = 30.0


def make_settings(root: Path, **overrides: object) -> HttpSettings:
    values: dict[str, object] = {
        "document_root": root,
        "header_timeout": HEADER_TIMEOUT,
        "keep_alive_timeout": KEEP_ALIVE_TIMEOUT,
        "send_timeout": SEND_TIMEOUT,
        **overrides,
    }
    return HttpSettings(**values)  # type: ignore[arg-type]


Serve = Callable[[trio.abc.Stream], Awaitable[None]]

#: Which transport start_server uses for its default connection (set per test).
TRANSPORT = ["stream"]
#: Client sockets a test opened, closed after it.
CLIENTS: list[socket.socket] = []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test runs over a trio stream and over a raw socket, except those marked
    ``stream_only`` (they bring a stream of their own)."""
    stream_only = metafunc.definition.get_closest_marker("stream_only") is not None
    params = ["stream"] if stream_only else ["stream", "socket"]
    metafunc.parametrize("transport", params, indirect=True)


@pytest.fixture(autouse=True)
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    TRANSPORT[0] = request.param
    yield request.param
    TRANSPORT[0] = "stream"
    for sock in CLIENTS:
        sock.close()
    CLIENTS.clear()


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (client, server), both non-blocking."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    for sock in (client, server):
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, server


def _memory_pair() -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
    return trio.testing.memory_stream_pair()


async def start_server(
    nursery: trio.Nursery,
    root: Path,
    *,
    site: StaticSite | None = None,
    pair: Callable[[], tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]]
    | None = None,
    **overrides: object,
) -> tuple[trio.abc.HalfCloseableStream, list[float]]:
    """Serve one connection in the background; returns the client end and [finish time].

    The default connection follows the ``transport`` fixture; a ``pair`` is a stream.
    """
    settings = make_settings(root, **overrides)
    site = site or StaticSite.from_settings(settings)
    finished: list[float] = []
    if pair is None and TRANSPORT[0] == "socket":
        raw_client, raw_server = socket_pair()
        CLIENTS.append(raw_client)
        client: trio.abc.HalfCloseableStream = trio.SocketStream(
            trio.socket.from_stdlib_socket(raw_client)
        )

        async def run_raw() -> None:
            await serve_http_socket(raw_server, site, settings)
            finished.append(trio.current_time())

        nursery.start_soon(run_raw)
        return client, finished
    if pair is None:
        pair = _memory_pair
    else:
        assert TRANSPORT[0] == "stream", "a test with its own stream is marked stream_only"
    client, server = pair()

    async def run() -> None:
        await serve(server, site, settings)
        finished.append(trio.current_time())

    nursery.start_soon(run)
    return client, finished


async def read_all(stream: trio.abc.ReceiveStream) -> tuple[bytes, float]:
    """Everything until EOF, and the time EOF came."""
    data = bytearray()
    while chunk := await stream.receive_some(65536):
        data += chunk
    return bytes(data), trio.current_time()


async def read_responses(stream: trio.abc.ReceiveStream, count: int) -> list[bytes]:
    reader = ResponseReader()
    while len(reader.responses) < count:
        chunk = await stream.receive_some(65536)
        assert chunk, f"EOF after {len(reader.responses)} responses"
        reader.feed(chunk)
    return [r.body for r in reader.responses]


# -- pipelining and writes ---------------------------------------------------------


class CountingStream(trio.abc.HalfCloseableStream):
    """Passes everything through to ``inner`` and records the size of each write."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self.inner = inner
        self.writes: list[int] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(len(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.stream_only
async def test_100_pipelined_requests_are_answered_in_order_in_one_write(
    docroot: Path, nursery: trio.Nursery
) -> None:
    for i in range(100):
        (docroot / f"f{i}.txt").write_text(f"file {i}")
    counting: list[CountingStream] = []

    def pair() -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
        client, server = trio.testing.memory_stream_pair()
        counting.append(CountingStream(server))
        return client, counting[0]

    client, _ = await start_server(nursery, docroot, pair=pair)
    await client.send_all(b"".join(raw_request(f"/f{i}.txt") for i in range(100)))
    bodies = await read_responses(client, 100)
    assert bodies == [f"file {i}".encode() for i in range(100)]
    assert len(counting[0].writes) == 1, counting[0].writes


async def test_pipelined_requests_split_anywhere(docroot: Path, nursery: trio.Nursery) -> None:
    client, _ = await start_server(nursery, docroot)
    data = raw_request("/a.txt") * 3 + raw_request("/", headers=[("Connection", "close")])
    for i in range(0, len(data), 7):
        await client.send_all(data[i : i + 7])
    wire, _ = await read_all(client)
    assert [r.body for r in parse_responses(wire)] == [b"0123456789abcdefghij"] * 3 + [INDEX]


async def test_large_file_over_a_stream_that_is_not_a_socket(
    docroot: Path, nursery: trio.Nursery
) -> None:
    client, _ = await start_server(nursery, docroot)
    await client.send_all(raw_request("/big.bin") + raw_request("/a.txt"))
    bodies = await read_responses(client, 2)
    assert bodies == [(docroot / "big.bin").read_bytes(), b"0123456789abcdefghij"]
    assert len(bodies[0]) == BIG_SIZE


async def test_head_has_no_body_on_the_wire(docroot: Path, nursery: trio.Nursery) -> None:
    client, _ = await start_server(nursery, docroot)
    await client.send_all(
        raw_request("/big.bin", method="HEAD")
        + raw_request("/a.txt", method="HEAD")
        + raw_request("/a.txt", headers=[("Connection", "close")])
    )
    wire, _ = await read_all(client)
    heads = wire.split(b"\r\n\r\n")
    assert heads[0].startswith(b"HTTP/1.1 200 OK") and b"Content-Length: %d" % BIG_SIZE in heads[0]
    assert heads[1].startswith(b"HTTP/1.1 200 OK")  # right after the first head: no body
    assert heads[2].startswith(b"HTTP/1.1 200 OK") and heads[3] == b"0123456789abcdefghij"


# -- connection lifetime -----------------------------------------------------------


async def test_http_1_0_closes_at_once(
    docroot: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client, finished = await start_server(nursery, docroot)
    start = trio.current_time()
    await client.send_all(raw_request("/a.txt", version="1.0"))
    wire, eof_at = await read_all(client)
    [response] = parse_responses(wire)
    assert response.headers["connection"] == "close"
    assert eof_at == start
    await trio.testing.wait_all_tasks_blocked()
    assert finished == [start]


async def test_http_1_0_keep_alive(docroot: Path, nursery: trio.Nursery) -> None:
    client, _ = await start_server(nursery, docroot)
    keep = [("Connection", "keep-alive")]
    await client.send_all(raw_request("/a.txt", version="1.0", headers=keep) * 2)
    reader = ResponseReader()
    while len(reader.responses) < 2:
        reader.feed(await client.receive_some())
    assert [r.headers["connection"] for r in reader.responses] == ["keep-alive"] * 2


async def test_keep_alive_timeout_closes_an_idle_connection(
    docroot: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client, finished = await start_server(nursery, docroot)
    await trio.sleep(3)
    await client.send_all(raw_request("/a.txt"))
    await read_responses(client, 1)
    answered = trio.current_time()
    wire, eof_at = await read_all(client)
    assert wire == b""  # idle close says nothing
    assert eof_at - answered == KEEP_ALIVE_TIMEOUT
    await trio.testing.wait_all_tasks_blocked()
    assert finished == [eof_at]


async def test_idle_close_is_exact_after_many_requests_over_time(
    docroot: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The deadline moves lazily (see server.py); the idle close must still be exact."""
    client, finished = await start_server(nursery, docroot)
    for gap in (1.0, 4.0, 7.0, 7.6, 0.5, 14.9, 3.0, 9.0):
        await trio.sleep(gap)
        await client.send_all(raw_request("/a.txt"))
        await read_responses(client, 1)
    answered = trio.current_time()
    wire, eof_at = await read_all(client)
    assert wire == b""
    assert eof_at - answered == KEEP_ALIVE_TIMEOUT
    await trio.testing.wait_all_tasks_blocked()
    assert finished == [eof_at]


async def test_a_silent_new_connection_is_closed_at_the_header_timeout(
    docroot: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    client, _ = await start_server(nursery, docroot)
    wire, eof_at = await read_all(client)
    assert wire == b""
    assert eof_at - start == HEADER_TIMEOUT


async def drip(stream: trio.abc.SendStream, data: bytes, interval: float) -> None:
    """Send one byte every ``interval`` seconds until done or the server hangs up."""
    try:
        for i in range(len(data)):
            await stream.send_all(data[i : i + 1])
            await trio.sleep(interval)
    except trio.BrokenResourceError:
        pass


async def test_one_byte_a_second_gets_408_at_the_header_timeout(
    docroot: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    client, finished = await start_server(nursery, docroot)
    nursery.start_soon(drip, client, raw_request("/a.txt", headers=[("X-Pad", "p" * 100)]), 1.0)
    wire, eof_at = await read_all(client)
    [response] = parse_responses(wire)
    assert response.status == 408 and response.headers["connection"] == "close"
    assert eof_at - start == HEADER_TIMEOUT
    # A lingering close (the client is still sending) for at most the farewell timeout.
    await trio.sleep(FAREWELL_TIMEOUT * 2)
    assert finished == [eof_at + FAREWELL_TIMEOUT]


async def test_the_next_requests_header_clock_starts_at_its_first_byte(
    docroot: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client, _ = await start_server(nursery, docroot)
    await client.send_all(raw_request("/a.txt"))
    await read_responses(client, 1)
    await trio.sleep(5)  # idle, within the keep-alive timeout
    first_byte = trio.current_time()
    nursery.start_soon(drip, client, raw_request("/a.txt", headers=[("X-Pad", "p" * 100)]), 1.0)
    wire, eof_at = await read_all(client)
    assert parse_responses(wire)[0].status == 408
    assert eof_at - first_byte == HEADER_TIMEOUT


async def test_a_slow_but_timely_request_is_served(
    docroot: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client, _ = await start_server(nursery, docroot)
    data = raw_request("/a.txt", headers=[("Connection", "close")])
    nursery.start_soon(drip, client, data, HEADER_TIMEOUT / (len(data) + 1))
    wire, _ = await read_all(client)
    assert parse_responses(wire)[0].body == b"0123456789abcdefghij"


@pytest.mark.stream_only
async def test_a_client_that_stops_reading_a_small_response_is_closed(
    docroot: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    (docroot / "60k.bin").write_bytes(b"x" * 60_000)  # cached: no thread involved
    client, finished = await start_server(nursery, docroot, pair=trio.testing.lockstep_stream_pair)
    await client.send_all(raw_request("/60k.bin"))
    sent_at = trio.current_time()
    await trio.sleep(SEND_TIMEOUT * 3)  # never read
    # A response from memory must be taken before the wait's deadline, which is at
    # least half the keep-alive timeout away (here: the first request's header deadline).
    [closed_at] = finished
    assert KEEP_ALIVE_TIMEOUT / 2 <= closed_at - sent_at <= KEEP_ALIVE_TIMEOUT
    assert closed_at - sent_at == HEADER_TIMEOUT


async def test_client_eof_mid_request_closes_quietly(docroot: Path, nursery: trio.Nursery) -> None:
    client, finished = await start_server(nursery, docroot)
    await client.send_all(b"GET /a.txt HTTP/1.1\r\nHo")
    await client.send_eof()
    wire, _ = await read_all(client)
    assert wire == b""
    await trio.testing.wait_all_tasks_blocked()
    assert len(finished) == 1


async def test_client_half_close_after_a_request_still_gets_the_answer(
    docroot: Path, nursery: trio.Nursery
) -> None:
    client, _ = await start_server(nursery, docroot)
    await client.send_all(raw_request("/a.txt") * 2)
    await client.send_eof()
    wire, _ = await read_all(client)
    assert [r.status for r in parse_responses(wire)] == [200, 200]


# -- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: 1\r\n folded\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"b" * 17000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
    ],
)
async def test_protocol_errors_are_answered_then_closed(
    docroot: Path,
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    data: bytes,
    status: int,
) -> None:
    client, finished = await start_server(nursery, docroot)
    await client.send_all(raw_request("/a.txt") + data + raw_request("/a.txt"))
    start = trio.current_time()
    wire, eof_at = await read_all(client)  # the server shut its sending side
    assert [r.status for r in parse_responses(wire)] == [200, status]
    assert eof_at == start
    await client.aclose()  # the lingering close ends when the client goes
    await trio.testing.wait_all_tasks_blocked()
    assert finished == [start]


async def test_a_bug_in_the_policy_is_500_logged_and_closes(
    docroot: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    class Buggy(StaticSite):
        def respond(self, request: Request, *, recheck: bool = False) -> Response:
            if request.target == b"/boom":
                raise ZeroDivisionError("our bug")
            return super().respond(request, recheck=recheck)

    client, finished = await start_server(nursery, docroot, site=Buggy(docroot))
    await client.send_all(raw_request("/a.txt") + raw_request("/boom") + raw_request("/a.txt"))
    wire, _ = await read_all(client)
    assert [r.status for r in parse_responses(wire)] == [200, 500]
    assert parse_responses(wire)[1].headers["connection"] == "close"
    [record] = [r for r in caplog.records if r.name == "trioserver.http"]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    await trio.testing.wait_all_tasks_blocked()
    assert len(finished) == 1  # serve returned normally: the worker lives


async def test_refuse_answers_503_and_closes(nursery: trio.Nursery) -> None:
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(refuse_http_connection, server)
    await client.send_all(raw_request("/"))
    wire, _ = await read_all(client)
    [response] = parse_responses(wire)
    assert response.status == 503
    assert response.headers["connection"] == "close"
    assert response.headers["retry-after"] == "1"
    assert b"503 Service Unavailable" in response.body


async def test_access_log_is_off_by_default_and_one_line_when_on(
    docroot: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, transport: str
) -> None:
    caplog.set_level(logging.INFO, logger="trioserver.http")
    client, _ = await start_server(nursery, docroot)
    await client.send_all(raw_request("/a.txt", headers=[("Connection", "close")]))
    await read_all(client)
    assert caplog.records == []
    client, _ = await start_server(nursery, docroot, access_log=True)
    await client.send_all(raw_request("/a.txt") + raw_request("/missing", method="HEAD"))
    await read_responses(client, 1)
    await trio.testing.wait_all_tasks_blocked()
    lines = [r.getMessage() for r in caplog.records if r.name == "trioserver.http.access"]
    peer = "-" if transport == "stream" else "127.0.0.1"  # a memory stream has no address
    assert lines == [
        f'{peer} "GET /a.txt HTTP/1.1" 200 20',
        f'{peer} "HEAD /missing HTTP/1.1" 404 0',
    ]


async def test_405_keeps_the_connection(docroot: Path, nursery: trio.Nursery) -> None:
    client, _ = await start_server(nursery, docroot)
    await client.send_all(
        b"POST /a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        + raw_request("/a.txt", headers=[("Connection", "close")])
    )
    wire, _ = await read_all(client)
    responses = parse_responses(wire)
    assert [r.status for r in responses] == [405, 200]
    assert responses[0].headers["allow"] == "GET, HEAD"


async def test_access_records_carry_user_agent_referrer_and_duration(
    docroot: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioserver.http")
    client, _ = await start_server(nursery, docroot, access_log=True)
    headers = [("User-Agent", "probe/1.0"), ("Referer", "http://example.test/")]
    await client.send_all(raw_request("/a.txt", headers=headers))
    await read_responses(client, 1)
    await trio.testing.wait_all_tasks_blocked()
    (record,) = [r for r in caplog.records if r.name == "trioserver.http.access"]
    assert (record.user_agent, record.referrer) == ("probe/1.0", "http://example.test/")  # type: ignore[attr-defined]
    assert record.duration >= 0  # type: ignore[attr-defined]
