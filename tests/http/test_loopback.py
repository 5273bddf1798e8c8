"""A few tests on real loopback sockets with real clients: keep-alive, sendfile, 1 GiB."""

from __future__ import annotations

import hashlib
import http.client
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio
import trio.lowlevel

from trioserver.config import HttpSettings
from trioserver.http import StaticSite, serve_http_connection

from .conftest import INDEX, download, parse_responses, raw_request, rss_bytes


@attrs.define(eq=False)
class Served:
    """The connections a test server took: how many, and a wait for them to finish."""

    started: int = 0
    finished: int = 0
    _lot: trio.lowlevel.ParkingLot = attrs.Factory(trio.lowlevel.ParkingLot)

    async def wait_finished(self, count: int) -> None:
        """Wait until ``count`` connections have been served to their end."""
        with trio.fail_after(10):
            while self.finished < count:
                await self._lot.park()

    def done(self) -> None:
        self.finished += 1
        self._lot.unpark_all()


@pytest.fixture
async def server(docroot: Path, nursery: trio.Nursery) -> AsyncIterator[tuple[int, Served]]:
    """A listener on 127.0.0.1:<free port>; yields (port, the connections served)."""
    settings = HttpSettings(document_root=docroot)
    site = StaticSite.from_settings(settings)
    connections = Served()

    async def handle(stream: trio.SocketStream) -> None:
        connections.started += 1
        try:
            await serve_http_connection(stream, site, settings)
        finally:
            connections.done()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await nursery.start(trio.serve_listeners, handle, listeners)
    yield port, connections


def _get(port: int, requests: list[tuple[str, str, dict[str, str]]]) -> list[tuple[int, bytes]]:
    """Several requests on one http.client connection (it reuses the socket)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    try:
        for method, path, headers in requests:
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            out.append((response.status, response.read()))
    finally:
        conn.close()
    return out


async def test_http_client_keep_alive(server: tuple[int, Served], docroot: Path) -> None:
    port, connections = server
    results = await trio.to_thread.run_sync(
        _get,
        port,
        [
            ("GET", "/", {}),
            ("HEAD", "/a.txt", {}),
            ("GET", "/missing", {}),
            ("GET", "/a.txt", {"Range": "bytes=2-4"}),
            ("POST", "/a.txt", {"Content-Length": "0"}),
            ("GET", "/../secret.txt", {}),
        ],
    )
    assert [status for status, _ in results] == [200, 200, 404, 206, 405, 404]
    assert results[0][1] == INDEX and results[1][1] == b"" and results[3][1] == b"234"
    assert connections.started == 1  # one connection carried all of them


async def test_sendfile_path_sends_large_files_and_ranges_intact(
    server: tuple[int, Served], docroot: Path
) -> None:
    port, _ = server
    data = bytes(range(256)) * (20 * 4096)  # 20 MiB: far past the cache, many sendfile calls
    (docroot / "large.bin").write_bytes(data)
    status, digest = await trio.to_thread.run_sync(download, port, "/large.bin")
    assert status == 200 and digest == hashlib.sha256(data).hexdigest()
    start, end = 1_000_003, 15_000_001
    status, digest = await trio.to_thread.run_sync(
        download, port, "/large.bin", {"Range": f"bytes={start}-{end}"}
    )
    assert status == 206 and digest == hashlib.sha256(data[start : end + 1]).hexdigest()


def _raw_exchange(port: int, data: bytes) -> tuple[bytes, float]:
    """Send ``data``, read until the server closes; return the bytes and seconds to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        started = time.monotonic()
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
        return bytes(received), time.monotonic() - started


async def test_raw_pipelining_and_http_1_0_close_at_once(server: tuple[int, Served]) -> None:
    port, _ = server
    data = raw_request("/a.txt") * 20 + raw_request("/big.bin") + raw_request("/", version="1.0")
    wire, seconds = await trio.to_thread.run_sync(_raw_exchange, port, data)
    responses = parse_responses(wire)
    assert [r.status for r in responses] == [200] * 22
    assert responses[-1].body == INDEX and responses[-1].headers["connection"] == "close"
    assert seconds < 2  # closed as soon as the last answer went, not at a timeout


def _download_discarding(port: int, path: str, samples: list[int]) -> int:
    """GET ``path`` over a raw socket into one reused buffer; sample RSS as it goes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw_request(path, headers=[("Connection", "close")]))
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        total = 0
        next_sample = 0
        while n := sock.recv_into(view):
            total += n
            if total >= next_sample:
                samples.append(rss_bytes())
                next_sample += 64 << 20
        return total


async def test_one_gib_file_with_flat_server_memory(
    server: tuple[int, Served], docroot: Path
) -> None:
    port, _ = server
    size = 1 << 30
    with open(docroot / "huge.bin", "wb") as f:
        f.truncate(size)  # sparse: costs no disk
    warm: list[int] = []
    await trio.to_thread.run_sync(_download_discarding, port, "/a.txt", warm)
    samples: list[int] = []
    before = rss_bytes()
    started = time.monotonic()
    total = await trio.to_thread.run_sync(_download_discarding, port, "/huge.bin", samples)
    elapsed = time.monotonic() - started
    head_size = total - size
    assert 0 < head_size < 1024  # every byte of the file arrived, plus one head
    growth = max(samples) - before
    assert growth < 20 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB"
    assert elapsed < 20


async def test_a_client_that_stops_reading_a_file_is_closed_at_the_send_timeout(
    docroot: Path, nursery: trio.Nursery
) -> None:
    settings = HttpSettings(document_root=docroot, send_timeout=0.5)
    site = StaticSite.from_settings(settings)
    with open(docroot / "huge.bin", "wb") as f:
        f.truncate(256 << 20)  # far more than the socket buffers hold
    done = trio.Event()
    served: list[float] = []

    async def handle(stream: trio.SocketStream) -> None:
        await serve_http_connection(stream, site, settings)
        served.append(time.monotonic())
        done.set()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await nursery.start(trio.serve_listeners, handle, listeners)
    client = socket.create_connection(("127.0.0.1", port))
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sendall(raw_request("/huge.bin"))
        asked = time.monotonic()
        with trio.fail_after(10):
            await done.wait()
        assert 0.5 <= served[0] - asked < 5
    finally:
        client.close()


def _read_a_little_then_reset(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw_request("/huge.bin"))
        sock.recv(65536)
        # RST instead of FIN: the server's next sendfile fails at once
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


async def test_a_client_that_hangs_up_mid_file_is_no_error(
    server: tuple[int, Served], docroot: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port, connections = server
    with open(docroot / "huge.bin", "wb") as f:
        f.truncate(256 << 20)
    for _ in range(3):
        await trio.to_thread.run_sync(_read_a_little_then_reset, port)
    await connections.wait_finished(3)  # the server noticed each reset and closed
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
