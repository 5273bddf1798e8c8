"""Reload with live connections handed to the new workers, on real processes and loopback.

Each test starts ``python -m trioserver`` (``--app handoff_app:router``, whose replies
name the worker pid that sent them) and kills what is left of it by pid at the end.
The clients are plain non-blocking sockets under one selector, in the test's thread.
"""

from __future__ import annotations

import collections
import os
import re
import resource
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from handoff_app import ECHO, JOIN, PUBLISH, PUSHED, WHOAMI
from real_server import Server, wait_for

from trioserver.client import BlockingClient
from trioserver.framer import FrameDecoder, Packet, encode

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

BASE = ["--listen", "127.0.0.1:0", "--app", "handoff_app:router"]
CONFIG = """
[http]
listen = []
[connection]
flood_check = false
any_packet_refreshes = true
[metrics]
log_interval = 0
"""
HANDOFF_DONE = r"reload: handoff done in [\d.]+ s: (\d+) moved, (\d+) drained.*?, (\d+) failed"


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    made: list[Server] = []
    yield made
    for server in made:
        server.kill_all()


def start(servers: list[Server], tmp: Path, workers: int, config: str = CONFIG) -> Server:
    server = Server(tmp, [*BASE, "--workers", str(workers)], config=config)
    servers.append(server)
    return server.start()


def raise_open_files(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


class Pingers:
    """``count`` connections, each with one ECHO in flight whose body is its sequence
    number; a connection pings again ``pace`` seconds after each reply. Every reply is
    checked against the number it answers: a lost, repeated or reordered one is an error."""

    def __init__(self, port: int, count: int, pace: float = 0.5) -> None:
        self.pace = pace
        self.socks: list[socket.socket] = []
        self.selector = selectors.DefaultSelector()
        for i in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setblocking(False)
            self.socks.append(sock)
            self.selector.register(sock, selectors.EVENT_READ, i)
        self.decoders = [FrameDecoder(0xFFFF) for _ in range(count)]
        self.sent = [0] * count  # the sequence number in flight
        self.replies = [0] * count
        self.last_pid = [0] * count
        self.errors: list[str] = []
        self.closed: dict[int, str] = {}
        self._due: collections.deque[tuple[float, int]] = collections.deque()
        self._sent_at = [0.0] * count
        #: The longest ping-to-reply time any connection saw.
        self.longest = 0.0
        for i in range(count):
            self._send(i)

    def __enter__(self) -> Pingers:
        return self

    def __exit__(self, *exc: object) -> None:
        for sock in self.socks:
            sock.close()
        self.selector.close()

    def _send(self, i: int) -> None:
        self.sent[i] += 1
        self._sent_at[i] = time.monotonic()
        try:
            self.socks[i].send(encode(ECHO, b"%d" % self.sent[i]))
        except OSError as exc:
            self._close(i, f"send: {exc}")

    def _close(self, i: int, why: str) -> None:
        if i not in self.closed:
            self.closed[i] = why
            self.selector.unregister(self.socks[i])

    def _packet(self, i: int, packet: Packet) -> None:
        if packet.code != ECHO:
            self.errors.append(f"connection {i}: unexpected packet {packet.code}")
            return
        seq, pid = packet.body.split()
        if int(seq) != self.sent[i] or self.replies[i] >= self.sent[i]:
            self.errors.append(f"connection {i}: reply {int(seq)}, expected {self.sent[i]}")
            return
        self.replies[i] += 1
        self.last_pid[i] = int(pid)
        now = time.monotonic()
        self.longest = max(self.longest, now - self._sent_at[i])
        self._due.append((now + self.pace, i))

    def run_until(
        self, done: Callable[[], object], timeout: float, what: str = "", every: float = 0.05
    ) -> None:
        """Serve the connections until ``done()`` (asked every ``every`` seconds)."""
        deadline = time.monotonic() + timeout
        next_check = 0.0
        while True:
            now = time.monotonic()
            if now >= next_check:
                if done():
                    return
                next_check = now + every
            assert now < deadline, f"timed out after {timeout} s waiting for {what or done}"
            while self._due and self._due[0][0] <= now:
                _, i = self._due.popleft()
                if i not in self.closed:
                    self._send(i)
            wait = min(0.05, max(0.0, self._due[0][0] - now)) if self._due else 0.05
            for key, _ in self.selector.select(wait):
                i = key.data
                try:
                    data = self.socks[i].recv(65536)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._close(i, f"recv: {exc}")
                    continue
                if not data:
                    self._close(i, "EOF")
                    continue
                decoder = self.decoders[i]
                decoder.receive_data(data)
                while isinstance(event := decoder.next_packet(), Packet):
                    self._packet(i, event)

    def all_replied_since(self, mark: list[int]) -> bool:
        return all(
            r > m or i in self.closed
            for i, (r, m) in enumerate(zip(self.replies, mark, strict=True))
        )


def handoffs(server: Server) -> list[tuple[int, int, int]]:
    """(moved, drained, failed) of each reload's handoff so far."""
    return [tuple(map(int, m.groups())) for m in re.finditer(HANDOFF_DONE, server.text())]  # type: ignore[misc]


def test_a_thousand_connections_ping_through_ten_reloads(
    servers: list[Server], tmp_path: Path
) -> None:
    raise_open_files(4096)
    server = start(servers, tmp_path, 2)
    port = server.wait_ready(2)
    first = set(server.workers())
    with Pingers(port, 1000) as pingers:
        pingers.run_until(lambda: min(pingers.replies) >= 1, 30, "a reply on every connection")
        for n in range(1, 11):
            os.kill(server.pid, signal.SIGHUP)
            pingers.run_until(lambda n=n: len(handoffs(server)) >= n, 30, f"handoff {n}")  # type: ignore[misc]
            assert not pingers.errors and not pingers.closed, (pingers.errors[:5], pingers.closed)
        mark = list(pingers.replies)
        pingers.run_until(lambda: pingers.all_replied_since(mark), 30, "a reply after the last")
        live = set(server.workers())
        assert pingers.errors == []
        assert pingers.closed == {}
        assert not live & first
        assert set(pingers.last_pid) <= live  # every connection is served by a new worker
    results = handoffs(server)
    assert all(moved == 1000 and drained == failed == 0 for moved, drained, failed in results), (
        results
    )
    print(f"{sum(pingers.replies)} replies through 10 reloads; longest {pingers.longest:.3f} s")


def test_a_logged_in_connection_stays_logged_in(servers: list[Server], tmp_path: Path) -> None:
    server = start(servers, tmp_path, 1)
    port = server.wait_ready(1)
    with BlockingClient.connect("127.0.0.1", port, timeout=10) as client:
        assert client.register("alice", "correct horse").result == 0
        assert client.login("alice", "correct horse").result == 0
        user, before = client.request(WHOAMI).body.split()
        assert user == b"alice"
        os.kill(server.pid, signal.SIGHUP)
        server.wait_log(HANDOFF_DONE, timeout=30)
        user, after = client.request(WHOAMI).body.split()
        assert user == b"alice" and after != before  # a new worker, no new login
        assert int(after) in server.workers()


def test_half_a_header_sent_before_the_reload_is_answered_after(
    servers: list[Server], tmp_path: Path
) -> None:
    server = start(servers, tmp_path, 1)
    port = server.wait_ready(1)
    with BlockingClient.connect("127.0.0.1", port, timeout=10) as client:
        before = client.request(ECHO, b"1").body.split()[1]
        packet = encode(ECHO, b"2")
        client.send_raw(packet[:3])
        os.kill(server.pid, signal.SIGHUP)
        assert server.wait_log(HANDOFF_DONE, timeout=30)[0].group(1) == "1"
        client.send_raw(packet[3:])
        seq, after = client.receive_packet().body.split()
        assert seq == b"2" and after != before


def test_group_membership_survives_a_reload(servers: list[Server], tmp_path: Path) -> None:
    """One worker: the publisher reaches the member in the new worker's own hub (across
    workers the push also needs the mesh, which re-forms after a reload)."""
    server = start(servers, tmp_path, 1)
    port = server.wait_ready(1)
    with BlockingClient.connect("127.0.0.1", port, timeout=10) as member:
        before = member.request(JOIN, b"g").body
        os.kill(server.pid, signal.SIGHUP)
        server.wait_log(HANDOFF_DONE, timeout=30)
        with BlockingClient.connect("127.0.0.1", port, timeout=10) as sender:
            sender.request(PUBLISH, b"after the reload")
        push = member.receive_packet()
        assert (push.code, push.body) == (PUSHED, b"after the reload")
        assert member.request(ECHO, b"1").body.split()[1] != before  # moved, and still in "g"


def test_a_new_worker_killed_mid_handoff_loses_nothing_acknowledged(
    servers: list[Server], tmp_path: Path
) -> None:
    """Whenever the kill lands, every connection's replies stay in order with none lost or
    repeated; the ones the killed worker had adopted close (as on any worker's death),
    the others stay with the old worker, which drains them; the server goes on serving."""
    raise_open_files(4096)
    server = start(servers, tmp_path, 1)
    port = server.wait_ready(1)
    (old,) = server.workers()
    with Pingers(port, 1000, pace=0.0) as pingers:
        pingers.run_until(lambda: min(pingers.replies) >= 1, 30, "a reply on every connection")
        os.kill(server.pid, signal.SIGHUP)
        started = server.wait_log(r"worker 1 started \(pid (\d+)\)", count=2, timeout=30)
        new = int(started[1].group(1))  # not a child that checks the application
        # Kill it as soon as a first connection it adopted answers: mid-handoff.
        pingers.run_until(lambda: new in pingers.last_pid, 30, "a first move", every=0.0)
        os.kill(new, signal.SIGKILL)
        mark = list(pingers.replies)
        pingers.run_until(lambda: handoffs(server), 30, "the handoff's end")
        pingers.run_until(lambda: pingers.all_replied_since(mark), 30, "every connection")
        # The killed worker's connections are gone; the old worker drains the rest.
        pingers.run_until(lambda: len(pingers.closed) == 1000, 30, "every connection closed")
    assert pingers.errors == []
    assert all(why == "EOF" or "reset" in why for why in pingers.closed.values()), set(
        pingers.closed.values()
    )
    ((moved, drained, failed),) = handoffs(server)
    assert moved >= 1 and moved + drained + failed == 1000
    server.wait_log(r"was killed by SIGKILL")
    wait_for("a replacement", lambda: len(server.workers()) == 1 and old not in server.workers())
    with BlockingClient.connect("127.0.0.1", port, timeout=10) as client:
        assert client.request(ECHO, b"1").body.startswith(b"1 ")
    print(f"handoff (moved, drained, failed): {handoffs(server)}; closed {len(pingers.closed)}")


def test_a_reload_to_fewer_then_more_workers_moves_every_connection(
    servers: list[Server], tmp_path: Path
) -> None:
    """2 → 1: both old workers hand to the one new worker; 1 → 3: it hands to the new
    slot 1, and slots 2 and 3 take only new connections."""
    server = Server(tmp_path, BASE, config=CONFIG + "[master]\nworkers = 2\n")
    servers.append(server.start())
    port = server.wait_ready(2)
    with Pingers(port, 300) as pingers:
        pingers.run_until(lambda: min(pingers.replies) >= 1, 30, "a reply on every connection")
        assert len(set(pingers.last_pid)) == 2
        for n, workers in enumerate((1, 3), start=1):
            server.config.write_text(CONFIG + f"[master]\nworkers = {workers}\n")
            os.kill(server.pid, signal.SIGHUP)
            pingers.run_until(lambda n=n: len(handoffs(server)) >= n, 30, f"handoff {n}")  # type: ignore[misc]
            mark = list(pingers.replies)
            pingers.run_until(lambda m=mark: pingers.all_replied_since(m), 30, "a reply after")  # type: ignore[misc]
            assert len(set(pingers.last_pid)) == 1  # all on one worker, the new slot 1
            assert set(pingers.last_pid) <= set(server.workers())
        assert pingers.errors == [] and pingers.closed == {}
    assert [moved for moved, _, _ in handoffs(server)] == [300, 300]
    wait_for("the old worker gone", lambda: len(server.workers()) == 3)


def test_a_stop_during_a_handoff_ends_cleanly(servers: list[Server], tmp_path: Path) -> None:
    """SIGTERM while the old worker hands over: the new worker stops adopting, the old one
    drains what it still holds, every reply is in order, the master exits 0."""
    raise_open_files(4096)
    server = start(servers, tmp_path, 1)
    port = server.wait_ready(1)
    with Pingers(port, 1000, pace=0.0) as pingers:
        pingers.run_until(lambda: min(pingers.replies) >= 1, 30, "a reply on every connection")
        os.kill(server.pid, signal.SIGHUP)
        pingers.run_until(lambda: "hand their connections" in server.text(), 30, "the handoff")
        os.kill(server.pid, signal.SIGTERM)
        pingers.run_until(lambda: len(pingers.closed) == 1000, 30, "every connection closed")
    assert pingers.errors == []
    assert server.wait_exit(30) == 0
    assert "master exiting with code 0" in server.text()


def test_a_handoff_out_of_time_drains_instead_of_being_killed(
    servers: list[Server], tmp_path: Path
) -> None:
    """master.graceful_timeout = 1: the handoff's budget (what the timeout leaves after
    the drain's share) is spent at once; what has not moved drains, answered and closed
    with EOF, and the old worker exits before the master would kill it."""
    config = CONFIG + "[master]\ngraceful_timeout = 1.0\n"
    server = start(servers, tmp_path, 1, config=config)
    port = server.wait_ready(1)
    with Pingers(port, 200) as pingers:
        pingers.run_until(lambda: min(pingers.replies) >= 1, 30, "a reply on every connection")
        os.kill(server.pid, signal.SIGHUP)
        pingers.run_until(lambda: handoffs(server), 30, "the handoff's end")
        server.wait_log(r"stopped: exited with code 0")
        mark = list(pingers.replies)
        pingers.run_until(lambda: pingers.all_replied_since(mark), 30, "a reply or the end")
    assert pingers.errors == []
    assert set(pingers.closed.values()) <= {"EOF"}
    assert "killing it" not in server.text() and "SIGKILL" not in server.text()
    assert "the handoff is not done after 0.0 s" in server.text()


def test_handoff_off_drains_as_before(servers: list[Server], tmp_path: Path) -> None:
    server = start(servers, tmp_path, 1, config=CONFIG + "[master]\nhandoff = false\n")
    port = server.wait_ready(1)
    with BlockingClient.connect("127.0.0.1", port, timeout=10) as client:
        client.request(ECHO, b"1")
        os.kill(server.pid, signal.SIGHUP)
        server.wait_log(r"stopped: exited with code 0", timeout=30)
        assert client.at_eof()
    assert "handed over" not in server.text() and "hand their" not in server.text()
    with BlockingClient.connect("127.0.0.1", port, timeout=10) as client:
        assert client.request(ECHO, b"2").body.startswith(b"2 ")
