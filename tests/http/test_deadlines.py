"""HTTP deadlines kept by the worker-wide timer, in virtual time with exact assertions,
on a raw socket (woken through ``notify_closing``/``shutdown``), on one whose reader
waits in the worker's read parking, and on a trio stream
(woken by cancelling the connection's scope): the drain's first-request grace, the drain
and give-up of an idle connection, the send timeout of a file, and many connections on
one timer."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from trioserver.config import HttpSettings
from trioserver.http import HttpConnectionState, StaticSite, serve_http
from trioserver.parking import ReadParking
from trioserver.timers import ExpiryTimer
from trioserver.transport import SocketTransport, StreamTransport, Transport

from .conftest import parse_responses, raw_request

HEADER_TIMEOUT = 10.0
KEEP_ALIVE_TIMEOUT = 15.0
SEND_TIMEOUT = 30.0


def settings(root: Path) -> HttpSettings:
    return HttpSettings(
        document_root=root,
        header_timeout=HEADER_TIMEOUT,
        keep_alive_timeout=KEEP_ALIVE_TIMEOUT,
        send_timeout=SEND_TIMEOUT,
    )


def socket_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    for sock in (client, server):
        sock.setblocking(False)
    return client, server


#: Client sockets a test opened, closed after it.
CLIENTS: list[socket.socket] = []


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    for sock in CLIENTS:
        sock.close()
    CLIENTS.clear()


class Connection:
    """One served connection: the client's stream, and when the server was done."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.finished: list[float] = []
        self.done = trio.Event()
        self.state = HttpConnectionState()
        self.parking = ReadParking() if kind == "parked" else None
        if kind in ("socket", "parked"):
            client, server = socket_pair()
            CLIENTS.append(client)
            self.client: trio.abc.Stream = trio.SocketStream(trio.socket.from_stdlib_socket(client))
            self.transport: Transport = SocketTransport(server, self.parking)
        else:
            client_end, server_end = trio.testing.memory_stream_pair()
            self.client = client_end
            self.transport = StreamTransport(server_end)

    async def serve(self, root: Path, timer: ExpiryTimer | None) -> None:
        http = settings(root)
        site = StaticSite.from_settings(http)
        async with trio.open_nursery() as nursery:
            if self.parking is not None:  # the worker's read parking, as a worker runs it
                nursery.start_soon(self.parking.run)
            await serve_http(self.transport, site, http, self.state, timer=timer)
            nursery.cancel_scope.cancel()
        self.finished.append(trio.current_time())
        self.done.set()

    async def read_to_eof(self) -> tuple[bytes, float]:
        data = bytearray()
        while chunk := await self.client.receive_some(65536):
            data += chunk
        return bytes(data), trio.current_time()


@pytest.fixture(params=["socket", "parked", "stream"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def timer(nursery: trio.Nursery) -> ExpiryTimer:
    timer = ExpiryTimer()
    nursery.start_soon(timer.run)
    return timer


async def test_a_fresh_connection_gets_exactly_the_grace_when_the_worker_stops(
    docroot: Path, nursery: trio.Nursery, timer: ExpiryTimer, kind: str,
    autojump_clock: trio.testing.MockClock,
) -> None:  # fmt: skip
    conn = Connection(kind)
    nursery.start_soon(conn.serve, docroot, timer)
    await trio.sleep(2)
    stopped = trio.current_time()
    conn.state.stop()
    wire, eof_at = await conn.read_to_eof()
    assert wire == b""  # no 408: the close says it
    assert eof_at - stopped == 1.0
    await trio.testing.wait_all_tasks_blocked()
    assert conn.finished == [eof_at]
    assert len(timer) == 0


async def test_a_fresh_connections_request_in_the_grace_is_answered_then_closed(
    docroot: Path, nursery: trio.Nursery, timer: ExpiryTimer, kind: str,
    autojump_clock: trio.testing.MockClock,
) -> None:  # fmt: skip
    conn = Connection(kind)
    nursery.start_soon(conn.serve, docroot, timer)
    await trio.testing.wait_all_tasks_blocked()
    conn.state.stop()
    await trio.sleep(0.75)
    await conn.client.send_all(raw_request("/a.txt"))
    wire, _ = await conn.read_to_eof()
    [response] = parse_responses(wire)
    assert response.status == 200


async def test_a_head_cut_short_while_its_reader_is_parked_gets_408_at_the_timeout(
    docroot: Path, nursery: trio.Nursery, timer: ExpiryTimer, kind: str,
    autojump_clock: trio.testing.MockClock,
) -> None:  # fmt: skip
    """The part of a head is there before the connection's first wait, so that wait is a
    quiet one: with the worker's read parking the reader waits there, and the timer
    must wake it there too."""
    conn = Connection(kind)
    start = trio.current_time()
    await conn.client.send_all(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n")
    nursery.start_soon(conn.serve, docroot, timer)
    with trio.fail_after(HEADER_TIMEOUT * 3):
        wire, eof_at = await conn.read_to_eof()
    [response] = parse_responses(wire)
    assert response.status == 408
    assert eof_at - start == HEADER_TIMEOUT


async def test_stop_and_give_up_close_an_idle_connection_at_that_instant(
    docroot: Path, nursery: trio.Nursery, timer: ExpiryTimer, kind: str,
    autojump_clock: trio.testing.MockClock,
) -> None:  # fmt: skip
    for how in ("stop", "give_up"):
        conn = Connection(kind)
        nursery.start_soon(conn.serve, docroot, timer)
        await conn.client.send_all(raw_request("/a.txt"))
        received = b""
        while not parse_responses(received):
            received += await conn.client.receive_some(65536)
        await trio.sleep(3)
        assert conn.state.idle
        at = trio.current_time()
        getattr(conn.state, how)()
        wire, eof_at = await conn.read_to_eof()
        assert (wire, eof_at) == (b"", at)


async def test_a_client_that_stops_reading_a_file_is_closed_at_the_send_timeout(
    docroot: Path, nursery: trio.Nursery, timer: ExpiryTimer,
    autojump_clock: trio.testing.MockClock,
) -> None:  # fmt: skip
    """On a raw socket (sendfile): the send deadline is last progress + send_timeout; the
    client never reads, so progress stops as the socket buffers fill."""
    autojump_clock.autojump_threshold = 0.2  # real seconds: let the loopback settle first
    with open(docroot / "huge.bin", "wb") as f:
        f.truncate(64 << 20)  # far more than the socket buffers hold
    conn = Connection("socket")
    nursery.start_soon(conn.serve, docroot, timer)
    await conn.client.send_all(raw_request("/huge.bin"))
    asked = trio.current_time()
    with trio.fail_after(SEND_TIMEOUT * 2):
        await conn.done.wait()
    assert conn.finished[0] - asked == SEND_TIMEOUT


async def test_many_connections_on_one_timer_each_close_at_their_own_deadline(
    docroot: Path, nursery: trio.Nursery, timer: ExpiryTimer, kind: str,
    autojump_clock: trio.testing.MockClock,
) -> None:  # fmt: skip
    """Staggered: one silent (header timeout), one idle after a request (keep-alive)."""
    start = trio.current_time()
    silent, idle = [], []
    for n in range(5):
        quiet, answered = Connection(kind), Connection(kind)
        nursery.start_soon(quiet.serve, docroot, timer)
        nursery.start_soon(answered.serve, docroot, timer)
        await answered.client.send_all(raw_request("/a.txt"))
        received = b""
        while not parse_responses(received):
            received += await answered.client.receive_some(65536)
        silent.append((quiet, trio.current_time() - start))
        idle.append((answered, trio.current_time() - start))
        await trio.sleep(n + 0.5)
    for conn, opened in silent:
        assert (await conn.read_to_eof())[0] == b""
        await trio.testing.wait_all_tasks_blocked()
        assert conn.finished[0] - start - opened == HEADER_TIMEOUT
    for conn, answered_at in idle:
        await conn.read_to_eof()
        await trio.testing.wait_all_tasks_blocked()
        assert conn.finished[0] - start - answered_at == KEEP_ALIVE_TIMEOUT
    assert len(timer) == 0


async def test_without_a_timer_the_connection_runs_its_own(
    docroot: Path, nursery: trio.Nursery, kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    conn = Connection(kind)
    start = trio.current_time()
    nursery.start_soon(conn.serve, docroot, None)
    wire, eof_at = await conn.read_to_eof()
    assert (wire, eof_at - start) == (b"", HEADER_TIMEOUT)
