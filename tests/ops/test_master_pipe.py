"""The master's poll loop with a watcher beside the worker pipes (real fork, real pipes)."""

from __future__ import annotations

import os
import select
import socket
import sys
import time
from collections.abc import Mapping

import pytest

from trioserver.config import Address, Config
from trioserver.prefork.pipe import READY, encode_report
from trioserver.prefork.procs import ChildSetup, OsSystem, WorkerMessage, WorkerReport, WorkerSpec

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork, Linux")


class OneSocket:
    """A watcher of one socket that it may close (as the admin listener closes clients)."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock
        self.closed_in_child = False

    def interest(self) -> Mapping[int, int]:
        return {self.sock.fileno(): select.POLLIN} if self.sock is not None else {}

    def on_ready(self, fd: int, revents: int) -> None:
        raise AssertionError(f"fd {fd} is not this watcher's any more")

    def deadline(self) -> float | None:
        return None

    def on_time(self, now: float) -> None:
        pass

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def child(setup: ChildSetup) -> int:
    os.write(setup.pipe, READY + encode_report(b"{}"))
    return 0


def test_a_pipe_reusing_a_closed_watcher_fd_is_still_read() -> None:
    # The bug this pins: the watcher's fd closed, a new worker's pipe got the same
    # number, and the next wait unregistered it as "no longer watched": READY lost.
    system = OsSystem(child)
    config = Config().replace(server__listen=(Address("127.0.0.1", 0),), http__listen=())
    system.prepare(config, 1)
    a, b = socket.socketpair()
    pid = 0
    try:
        watcher = OneSocket(a)
        system.watch(watcher)
        assert system.wait(0) == []
        number = a.fileno()
        watcher.close()
        pid = system.spawn(WorkerSpec(1, 1, 0, config))
        if number not in system._pipes:
            pytest.skip("the pipe did not reuse the watcher's fd number")
        events: list[object] = []
        deadline = time.monotonic() + 10
        while not any(isinstance(e, WorkerReport) for e in events):
            assert time.monotonic() < deadline, f"nothing read from the pipe: {events}"
            events.extend(system.wait(0.05))
        assert WorkerMessage(pid, READY) in events
        assert WorkerReport(pid, b"{}") in events
    finally:
        b.close()
        system.close()
        if pid:
            os.waitpid(pid, 0)
