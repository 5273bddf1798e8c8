"""The worker's HTTP listener on real loopback sockets: its raw-socket fast path.

The worker accepts a raw standard socket and serves it through the socket transport,
without a trio ``SocketStream``; these tests would fail if it fell back to the
stream transport (``as_transport``, with which the acceptor wraps accepted streams,
is replaced by a trap).
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing

from trioserver.config import Address, Config
from trioserver.worker import Worker

from ..polling import wait_until
from .conftest import INDEX, download, parse_responses, raw_request

T = TypeVar("T")


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


@pytest.fixture
async def worker(
    docroot: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Worker]:
    async def trap(*args: object, **kwargs: object) -> None:
        raise AssertionError("the worker used the stream adapter, not the raw socket")

    monkeypatch.setattr("trioserver.acceptor.as_transport", trap)
    config = Config().replace(
        server__listen=(Address("127.0.0.1", 0),),
        http__listen=(Address("127.0.0.1", 0),),
        http__document_root=docroot,
        http__keep_alive_timeout=30.0,
        http__header_timeout=1.0,
        server__max_connections=8,
        connection__recycle_delay=0,
    )
    worker = Worker(config)
    await nursery.start(worker.serve)
    yield worker
    worker.stop(grace=0)


def http_port(worker: Worker) -> int:
    return worker.http_addresses[0][1]


def exchange(port: int, data: bytes, *, half_close: bool = False) -> tuple[bytes, float]:
    """Send ``data``, read until the server closes; the bytes and the seconds to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
        return bytes(received), time.monotonic() - started


async def wait_closed(worker: Worker) -> None:
    """Until the worker has closed every HTTP connection (and released its slot)."""
    with trio.fail_after(10):
        await worker.wait_http_connections(0)
    assert worker.http_connection_count == 0 and worker.pool.statistics().in_use == 0


async def test_keep_alive_requests_through_the_worker(worker: Worker, docroot: Path) -> None:
    port = http_port(worker)

    def run() -> list[tuple[int, bytes]]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        out = []
        try:
            for method, path, headers in [
                ("GET", "/", {}),
                ("HEAD", "/a.txt", {}),
                ("GET", "/missing", {}),
                ("GET", "/a.txt", {"Range": "bytes=2-4"}),
                ("POST", "/a.txt", {"Content-Length": "0"}),
                ("GET", "/../secret.txt", {}),
            ] * 50:
                conn.request(method, path, headers=headers)
                response = conn.getresponse()
                out.append((response.status, response.read()))
        finally:
            conn.close()
        return out

    results = await in_thread(run)
    assert [status for status, _ in results] == [200, 200, 404, 206, 405, 404] * 50
    assert results[0][1] == INDEX and results[1][1] == b"" and results[3][1] == b"234"
    await wait_closed(worker)
    stats = worker.counters.http_by_status
    assert (stats[200], stats[206], stats[404], stats[405]) == (100, 50, 100, 50)
    assert worker.counters.accepted == 1  # one connection carried all 300


async def test_100_pipelined_requests_in_order(worker: Worker, docroot: Path) -> None:
    for i in range(100):
        (docroot / f"f{i}.txt").write_text(f"file {i}")
    data = b"".join(raw_request(f"/f{i}.txt") for i in range(100))
    data += raw_request("/", headers=[("Connection", "close")])
    wire, _ = await in_thread(lambda: exchange(http_port(worker), data))
    bodies = [r.body for r in parse_responses(wire)]
    assert bodies == [f"file {i}".encode() for i in range(100)] + [INDEX]


@pytest.mark.parametrize(
    "request_bytes",
    [
        raw_request("/a.txt", version="1.0"),
        raw_request("/a.txt", headers=[("Connection", "close")]),
        raw_request("/a.txt") + raw_request("/big.bin", version="1.0"),
    ],
    ids=["HTTP/1.0", "Connection: close", "HTTP/1.0 after keep-alive, from disk"],
)
async def test_a_response_asked_to_be_last_closes_at_once(
    worker: Worker, request_bytes: bytes
) -> None:
    """The keep-alive timeout is 30 s: EOF right after the answer proves the close."""
    wire, seconds = await in_thread(lambda: exchange(http_port(worker), request_bytes))
    responses = parse_responses(wire)
    assert responses and all(r.status == 200 for r in responses)
    assert responses[-1].headers["connection"] == "close"
    assert seconds < 1.0
    await wait_closed(worker)


async def test_large_files_go_by_sendfile_intact(worker: Worker, docroot: Path) -> None:
    data = bytes(range(256)) * (12 * 4096)  # 12 MiB: several sendfile chunks
    (docroot / "large.bin").write_bytes(data)
    port = http_port(worker)
    status, digest = await in_thread(lambda: download(port, "/large.bin"))
    assert status == 200 and digest == hashlib.sha256(data).hexdigest()
    start, end = 1_000_003, 9_000_001
    status, digest = await in_thread(
        lambda: download(port, "/large.bin", {"Range": f"bytes={start}-{end}"})
    )
    assert status == 206 and digest == hashlib.sha256(data[start : end + 1]).hexdigest()


async def test_a_slow_head_gets_408_and_the_worker_lives(worker: Worker) -> None:
    port = http_port(worker)

    def slow() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n")  # never finished
            received = bytearray()
            while chunk := sock.recv(65536):
                received += chunk
            return bytes(received)

    started = time.monotonic()
    wire = await in_thread(slow)
    assert [r.status for r in parse_responses(wire)] == [408]
    assert 0.9 < time.monotonic() - started < 5
    wire, _ = await in_thread(lambda: exchange(port, raw_request("/a.txt", version="1.0")))
    assert parse_responses(wire)[0].body == b"0123456789abcdefghij"


async def test_a_client_reset_mid_file_leaves_the_worker_serving(
    worker: Worker, docroot: Path
) -> None:
    (docroot / "large.bin").write_bytes(b"z" * (16 << 20))
    port = http_port(worker)

    def reset() -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(raw_request("/large.bin"))
        sock.recv(1000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, with most of the file still to go

    for _ in range(3):
        await in_thread(reset)
    await wait_closed(worker)
    wire, _ = await in_thread(lambda: exchange(port, raw_request("/", version="1.0")))
    assert parse_responses(wire)[0].body == INDEX


async def test_stop_closes_an_idle_keep_alive_connection_at_once(worker: Worker) -> None:
    port = http_port(worker)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(raw_request("/a.txt"))
        first = await in_thread(lambda: sock.recv(65536))
        assert parse_responses(first)[0].status == 200
        assert worker.http_connection_count == 1  # registered before it answered
        worker.stop()  # 30 s of keep-alive left: the drain must not wait for it
        rest = await in_thread(lambda: sock.recv(65536))
        assert rest == b""
    finally:
        sock.close()


async def test_waiting_for_the_http_connections_to_close_wakes_at_the_last_close(
    worker: Worker,
) -> None:
    sock = socket.create_connection(("127.0.0.1", http_port(worker)), timeout=10)
    try:
        sock.sendall(raw_request("/a.txt"))  # keep-alive: it stays open afterwards
        assert parse_responses(await in_thread(lambda: sock.recv(65536)))[0].status == 200
        assert worker.http_connection_count == 1
        closed = trio.Event()

        async def wait() -> None:
            await worker.wait_http_connections(0)
            closed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            assert not closed.is_set()  # the keep-alive connection is still open
            sock.close()  # the client leaves: the server reads EOF and closes
            with trio.fail_after(10):
                await closed.wait()
        assert worker.http_connection_count == 0
    finally:
        sock.close()


class Spy:
    """Counts the calls to an acceptor coroutine method, and runs it."""

    def __init__(self, worker: Worker, name: str) -> None:
        self.calls = 0
        original = getattr(worker.acceptor, name)

        async def counted(*args: object, **kwargs: object) -> None:
            self.calls += 1
            await original(*args, **kwargs)

        setattr(worker.acceptor, name, counted)


def defer_accept(worker: Worker) -> None:
    """The HTTP listener wakes only once a request is there (so the worker finds it
    there at accept, as a loaded worker does)."""
    sock = worker.acceptor.http_listeners[0].sock  # type: ignore[union-attr]
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)


async def test_a_request_that_asks_to_close_and_is_there_is_answered_without_a_task(
    worker: Worker,
) -> None:
    """HTTP/1.0 and Connection: close, from memory: one recv, one send and the close in
    the accept loop; keep-alive and a file from disk go to a connection task, which
    answers what was read as if it had read it itself."""
    defer_accept(worker)
    tasks = Spy(worker, "_http_connection")
    port = http_port(worker)
    for request_bytes in (
        raw_request("/a.txt", version="1.0"),
        raw_request("/a.txt", headers=[("Connection", "close")]),
        raw_request("/missing", version="1.0"),
    ):
        wire, _ = await in_thread(lambda: exchange(port, request_bytes))  # noqa: B023
        [response] = parse_responses(wire)
        assert response.headers["connection"] == "close"
    assert tasks.calls == 0
    for request_bytes in (
        raw_request("/a.txt") + raw_request("/a.txt", version="1.0"),  # keep-alive first
        raw_request("/big.bin", version="1.0"),  # from disk
    ):
        wire, _ = await in_thread(lambda: exchange(port, request_bytes, half_close=True))  # noqa: B023
    assert tasks.calls == 2
    # Incomplete, then EOF: closed without a word (by the accept loop or a task).
    wire, _ = await in_thread(
        lambda: exchange(port, b"GET /a.txt HTTP/1.0\r\nHost: x\r\n", half_close=True)
    )
    assert wire == b""
    await wait_closed(worker)
    stats = worker.counters.http_by_status
    assert (stats[200], stats[404]) == (5, 1)
    assert worker.counters.accepted == 6 and worker.pool.statistics().in_use == 0


async def test_an_answer_the_socket_takes_in_part_is_finished_by_a_task(
    worker: Worker, docroot: Path
) -> None:
    (docroot / "60k.bin").write_bytes(bytes(range(256)) * 240)  # cached: from memory
    defer_accept(worker)
    listener = worker.acceptor.http_listeners[0].sock  # type: ignore[union-attr]
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # copied to accepted ones
    finishes = Spy(worker, "_finish_answer")
    wire, _ = await in_thread(
        lambda: exchange(http_port(worker), raw_request("/60k.bin", version="1.0"))
    )
    [response] = parse_responses(wire)
    assert response.status == 200 and response.body == bytes(range(256)) * 240
    assert finishes.calls == 1
    await wait_until(lambda: worker.pool.statistics().in_use == 0)
