"""A fake :class:`trioserver.prefork.procs.System`: fake pids, fake clock, scripted exits, beats.

Tests drive a real :class:`~trioserver.prefork.master.Master` through it: ``fake.ready(pid)``
delivers a READY message, ``fake.exit(pid, code)`` queues an exit and a SIGCHLD,
and ``fake.wait(timeout)`` advances the clock by ``timeout`` when nothing is
queued, so deadlines pass in virtual time.
"""

from __future__ import annotations

import collections
import signal

import attrs

from trioserver.config import Config
from trioserver.prefork.procs import (
    HEARTBEAT,
    READY,
    Event,
    Exited,
    HandoffReport,
    SignalReceived,
    WorkerMessage,
    WorkerSpec,
)


@attrs.define
class Spawned:
    pid: int
    spec: WorkerSpec
    alive: bool = True


class FakeSystem:
    def __init__(self) -> None:
        self.clock = 1000.0
        self.spawned: list[Spawned] = []
        self.kills: list[tuple[int, signal.Signals]] = []
        self.prepared: list[tuple[Config, int]] = []
        self.released: list[Config] = []
        self.fail_prepare: OSError | None = None
        self.fail_spawn: OSError | None = None
        #: The clock each time the master stopped the listening sockets queueing.
        self.stopped_queueing: list[float] = []
        #: (old pid, new pid) for each handoff channel the master gave out.
        self.handovers: list[tuple[int, int]] = []
        #: Pids whose control socket is gone: hand_over answers False.
        self.unreachable: set[int] = set()
        self._events: collections.deque[Event] = collections.deque()
        self._exits: list[Exited] = []
        self._next_pid = 100

    # -- System ------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock

    def prepare(self, config: Config, workers: int) -> None:
        if self.fail_prepare is not None:
            raise self.fail_prepare
        self.prepared.append((config, workers))

    def release(self, config: Config) -> None:
        self.released.append(config)

    def spawn(self, spec: WorkerSpec) -> int:
        if self.fail_spawn is not None:
            raise self.fail_spawn
        self._next_pid += 1
        self.spawned.append(Spawned(self._next_pid, spec))
        return self._next_pid

    def stop_queueing(self) -> None:
        self.stopped_queueing.append(self.clock)

    def kill(self, pid: int, signum: int) -> None:
        self.kills.append((pid, signal.Signals(signum)))

    def hand_over(self, old: int, new: int) -> bool:
        if old in self.unreachable or new in self.unreachable:
            return False
        self.handovers.append((old, new))
        return True

    def reap(self) -> list[Exited]:
        exits, self._exits = self._exits, []
        return exits

    def wait(self, timeout: float | None) -> list[Event]:
        if self._events:
            events = list(self._events)
            self._events.clear()
            return events
        assert timeout is not None, "the master would wait forever: nothing is scheduled"
        self.clock += timeout
        return []

    # -- scripting ---------------------------------------------------------------------

    def signal(self, signum: int) -> None:
        self._events.append(SignalReceived(signum))

    def ready(self, pid: int) -> None:
        self._events.append(WorkerMessage(pid, READY))

    def beat(self, pid: int) -> None:
        self._events.append(WorkerMessage(pid, HEARTBEAT))

    def handed_over(self, pid: int, payload: bytes) -> None:
        self._events.append(HandoffReport(pid, payload))

    def exit(
        self, pid: int, returncode: int, unread: bytes = b"", handoffs: tuple[bytes, ...] = ()
    ) -> None:
        for child in self.spawned:
            if child.pid == pid:
                child.alive = False
        self._exits.append(Exited(pid, returncode, unread, handoffs=handoffs))
        self._events.append(SignalReceived(signal.SIGCHLD))

    def alive(self) -> list[Spawned]:
        return [child for child in self.spawned if child.alive]

    def kills_of(self, pid: int) -> list[signal.Signals]:
        return [sig for p, sig in self.kills if p == pid]
