"""The admin listener, driven by a poll loop like the master's: answers, bounds, slow clients."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from trioserver.config import Address
from trioserver.ops.admin import MAX_REQUEST, AdminPages, AdminServer
from trioserver.ops.metrics import Gatherer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def admin() -> Iterator[tuple[AdminServer, Clock, list[str]]]:
    clock = Clock()
    health = ["serving"]
    pages = AdminPages(Gatherer(), lambda: health[0])
    server = AdminServer.bind(Address("127.0.0.1", 0), pages.answer, clock, timeout=5.0)
    yield server, clock, health
    server.close()


def step(server: AdminServer, rounds: int = 1) -> None:
    """What the master's loop does: poll the watcher's fds, dispatch, then deadlines."""
    for _ in range(rounds):
        poll = select.poll()
        for fd, mask in server.interest().items():
            poll.register(fd, mask)
        for fd, revents in poll.poll(20):
            server.on_ready(fd, revents)
        server.on_time(server._clock())


def until(server: AdminServer, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not done():
        assert time.monotonic() < deadline, "admin server did not get there"
        step(server)


def connect(server: AdminServer) -> socket.socket:
    sock = socket.create_connection(server.address)
    sock.setblocking(False)
    return sock


def read_reply(server: AdminServer, sock: socket.socket) -> bytes:
    got = bytearray()
    closed = False

    def done() -> bool:
        nonlocal closed
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return False
        if not chunk:
            closed = True
            return True
        got.extend(chunk)
        return False

    until(server, done)
    sock.close()
    return bytes(got)


def get(server: AdminServer, path: str, method: str = "GET") -> bytes:
    sock = connect(server)
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return read_reply(server, sock)


def test_routes(admin: tuple[AdminServer, Clock, list[str]]) -> None:
    server, _, health = admin
    metrics = get(server, "/metrics")
    assert metrics.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"text/plain; version=0.0.4" in metrics and b"trioserver_healthy 1" in metrics
    assert get(server, "/healthz").endswith(b"\r\n\r\nserving\n")
    health[0] = "draining"
    reply = get(server, "/healthz")
    assert reply.startswith(b"HTTP/1.1 503") and reply.endswith(b"draining\n")
    assert b'"health": "draining"' in get(server, "/status.json")
    assert get(server, "/nope").startswith(b"HTTP/1.1 404")
    assert get(server, "/metrics", "POST").startswith(b"HTTP/1.1 405")
    head = get(server, "/metrics", "HEAD")
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")


def test_oversized_and_malformed_requests(admin: tuple[AdminServer, Clock, list[str]]) -> None:
    server, _, _ = admin
    sock = connect(server)
    sock.sendall(b"GET /" + b"a" * MAX_REQUEST)
    assert read_reply(server, sock).startswith(b"HTTP/1.1 431")
    sock = connect(server)
    sock.sendall(b"hello\r\n\r\n")
    assert read_reply(server, sock).startswith(b"HTTP/1.1 400")


def test_a_silent_client_neither_blocks_others_nor_stays(
    admin: tuple[AdminServer, Clock, list[str]],
) -> None:
    server, clock, _ = admin
    silent = connect(server)
    until(server, lambda: len(server._clients) == 1)
    assert get(server, "/healthz").endswith(b"serving\n")  # served meanwhile
    assert server.deadline() == clock.now + 5.0
    clock.now += 5.0
    step(server)
    assert server._clients == {}
    silent.setblocking(True)
    silent.settimeout(5)
    assert silent.recv(10) == b""  # closed by the server
    silent.close()


def small_admin(clock: Clock, max_clients: int) -> AdminServer:
    pages = AdminPages(Gatherer(), lambda: "serving")
    return AdminServer.bind(
        Address("127.0.0.1", 0),
        pages.answer,
        clock,
        timeout=5.0,
        request_timeout=1.0,
        max_clients=max_clients,
    )


def test_at_the_limit_the_oldest_idle_client_makes_room() -> None:
    clock = Clock()
    server = small_admin(clock, max_clients=4)
    try:
        idle = [connect(server) for _ in range(4)]
        until(server, lambda: len(server._clients) == 4)
        assert server._sock.fileno() in server.interest()  # it never stops accepting
        late = connect(server)
        late.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert read_reply(server, late).endswith(b"serving\n")  # at the same virtual instant
        assert server.evicted >= 1
        idle[0].setblocking(True)
        idle[0].settimeout(5)
        assert idle[0].recv(10) == b""  # the oldest idle one was closed for it
        for sock in idle:
            sock.close()
    finally:
        server.close()


def test_a_client_that_sends_no_request_is_closed_after_the_request_timeout() -> None:
    clock = Clock()
    server = small_admin(clock, max_clients=4)
    try:
        silent = connect(server)
        until(server, lambda: len(server._clients) == 1)
        assert server.deadline() == clock.now + 1.0
        clock.now += 1.0
        step(server)
        assert server._clients == {}
        silent.close()
    finally:
        server.close()


def test_the_admin_port_is_not_shared_and_a_clash_names_the_setting(
    admin: tuple[AdminServer, Clock, list[str]],
) -> None:
    server, clock, _ = admin
    host, port = server.address
    with pytest.raises(OSError, match=rf"cannot listen on 127.0.0.1:{port} \(metrics.listen\)"):
        AdminServer.bind(Address(host, port), lambda method, path: None, clock, timeout=5.0)  # type: ignore[arg-type, return-value]
