"""The master's rules, driven through a fake system in virtual time: no processes, no sleeps."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import pytest
from fake_system import FakeSystem

from trioserver.config import Config, ConfigError
from trioserver.prefork.master import (
    FAST_STOP_GRACE,
    FINAL_STOP_SIGNAL,
    SIGNAL_ACTIONS,
    Action,
    ExitCode,
    Master,
)
from trioserver.prefork.procs import READY, describe_exit


def make_config(**master: object) -> Config:
    settings = {
        "workers": 2,
        "graceful_timeout": 30.0,
        "boot_timeout": 10.0,
        "liveness_timeout": 20.0,
        "crash_limit": 3,
        "crash_window": 60.0,
    }
    settings.update(master)
    return Config().replace(**{f"master__{k}": v for k, v in settings.items()})


class Harness:
    def __init__(self, config: Config) -> None:
        self.fake = FakeSystem()
        self.config = config
        self.next_config: Config | ConfigError = config
        self.applied: list[Config] = []
        self.reopened = 0
        self.readies = 0
        self.master = Master(
            config,
            self.fake,
            load_config=self._load,
            apply_config=self.applied.append,
            reopen_logs=self._reopen,
            on_ready=self._ready,
        )

    def _load(self) -> Config:
        if isinstance(self.next_config, ConfigError):
            raise self.next_config
        return self.next_config

    def _reopen(self) -> None:
        self.reopened += 1

    def _ready(self) -> None:
        self.readies += 1

    def step(self, times: int = 1) -> None:
        for _ in range(times):
            self.master.step()

    def run_until(self, done: Callable[[], bool], limit: int = 50) -> None:
        for _ in range(limit):
            if done():
                return
            self.master.step()
        raise AssertionError("condition not reached")

    def boot(self) -> list[int]:
        """Start and make every first worker ready; their pids."""
        self.master.start()
        pids = [child.pid for child in self.fake.alive()]
        for pid in pids:
            self.fake.ready(pid)
        self.step()
        return pids

    def live(self, generation: int | None = None) -> list[int]:
        return [
            w.pid
            for w in self.master.workers.values()
            if generation is None or w.generation == generation
        ]


@pytest.fixture
def h() -> Harness:
    return Harness(make_config())


def messages(records: list[logging.LogRecord]) -> str:
    return "\n".join(r.getMessage() for r in records)


def test_signal_table_covers_the_operator_signals() -> None:
    assert SIGNAL_ACTIONS[signal.SIGTERM] is Action.GRACEFUL_STOP
    assert SIGNAL_ACTIONS[signal.SIGINT] is Action.FAST_STOP
    assert SIGNAL_ACTIONS[signal.SIGQUIT] is Action.FAST_STOP
    assert SIGNAL_ACTIONS[signal.SIGHUP] is Action.RELOAD
    assert SIGNAL_ACTIONS[signal.SIGUSR1] is Action.REOPEN_LOGS
    assert SIGNAL_ACTIONS[signal.SIGCHLD] is Action.REAP


@pytest.mark.parametrize(
    ("returncode", "killed", "expected"),
    [
        (0, None, "exited with code 0"),
        (3, None, "exited with code 3"),
        (-9, None, "was killed by SIGKILL (perhaps out of memory"),
        (-11, None, "was killed by SIGSEGV (a crash in native code)"),
        (-15, None, "was killed by SIGTERM"),
        (-9, "no heartbeat for 20.0 s", "was killed by SIGKILL (by the master: no heartbeat"),
    ],
)
def test_describe_exit(returncode: int, killed: str | None, expected: str) -> None:
    assert describe_exit(returncode, killed).startswith(expected)


def test_start_forks_every_worker_and_reports_ready_once(h: Harness) -> None:
    h.master.start()
    specs = [child.spec for child in h.fake.spawned]
    assert [(s.index, s.workers, s.generation) for s in specs] == [(1, 2, 0), (2, 2, 0)]
    h.fake.ready(h.fake.spawned[0].pid)
    h.step()
    assert h.readies == 0
    h.fake.ready(h.fake.spawned[1].pid)
    h.step()
    assert h.readies == 1
    assert h.master.exit_code is None


def test_workers_zero_means_one_per_cpu() -> None:
    import os

    h = Harness(make_config(workers=0))
    h.master.start()
    assert len(h.fake.spawned) == len(os.sched_getaffinity(0))


def test_a_dead_worker_is_replaced_at_once(h: Harness, records: list[logging.LogRecord]) -> None:
    first, second = h.boot()
    h.fake.exit(first, -signal.SIGKILL)
    h.step()
    assert f"worker 1 (pid {first}) was killed by SIGKILL (perhaps out of memory" in messages(
        records
    )
    replacement = h.fake.spawned[-1]
    assert replacement.spec.index == 1 and replacement.pid not in (first, second)
    assert h.fake.kills == []  # the other worker was never touched
    assert h.master.exit_code is None


def test_a_worker_that_fails_to_boot_stops_the_server(
    h: Harness, records: list[logging.LogRecord]
) -> None:
    h.master.start()
    first, second = (child.pid for child in h.fake.spawned)
    h.fake.ready(second)
    h.fake.exit(first, 3)
    h.step()
    assert f"worker 1 (pid {first}) failed to boot: it exited with code 3" in messages(records)
    assert len(h.fake.spawned) == 2  # no respawn
    assert h.fake.kills_of(second) == [FINAL_STOP_SIGNAL]
    h.fake.exit(second, 0)
    h.step()
    assert h.master.exit_code is ExitCode.BOOT_FAILED
    assert h.readies == 0


def test_ready_in_the_pipe_of_a_dead_worker_counts(h: Harness) -> None:
    h.master.start()
    first, second = (child.pid for child in h.fake.spawned)
    h.fake.ready(second)
    h.fake.exit(first, 1, unread=READY)  # said READY, then died before the master read it
    h.step()
    assert h.master.exit_code is None
    assert h.fake.spawned[-1].spec.index == 1  # replaced, not a boot failure


def test_a_crash_loop_stops_the_server(h: Harness, records: list[logging.LogRecord]) -> None:
    h.boot()
    for _ in range(3):
        victim = h.fake.alive()[0]
        h.fake.exit(victim.pid, 1)
        h.step()
        if h.master.exit_code is None and len(h.live()) == 2:
            h.fake.ready(h.fake.spawned[-1].pid)
            h.step()
    assert "3 worker deaths within 60 s" in messages(records)
    assert len(h.fake.spawned) == 2 + 2  # the third death was not replaced
    for child in h.fake.alive():
        h.fake.exit(child.pid, 0)
    h.step()
    assert h.master.exit_code is ExitCode.CRASH_LOOP


def test_crashes_spread_out_are_not_a_loop(h: Harness) -> None:
    h.boot()
    for _ in range(6):
        victim = h.fake.alive()[0]
        h.fake.exit(victim.pid, 1)
        h.step()
        new = h.fake.spawned[-1].pid
        h.fake.ready(new)
        h.step()
        h.fake.clock += 31.0  # two crashes per crash_window at most
        for pid in h.live():
            h.fake.beat(pid)
        h.step()
    assert h.master.exit_code is None
    assert len(h.fake.spawned) == 2 + 6


def test_graceful_stop_terms_then_kills_after_the_timeout(h: Harness) -> None:
    pids = h.boot()
    start = h.fake.clock
    h.fake.signal(signal.SIGTERM)
    h.step()
    # The sockets queue no more first; then each worker takes what is queued and drains.
    assert h.fake.stopped_queueing == [start]
    assert all(h.fake.kills_of(pid) == [FINAL_STOP_SIGNAL] for pid in pids)
    h.fake.exit(pids[0], 0)  # drained in time
    h.run_until(lambda: signal.SIGKILL in h.fake.kills_of(pids[1]))
    assert h.fake.clock - start == pytest.approx(30.0)
    assert h.fake.kills_of(pids[0]) == [FINAL_STOP_SIGNAL]
    assert h.fake.stopped_queueing == [start]
    assert h.master.exit_code is None
    h.fake.exit(pids[1], -signal.SIGKILL)
    h.step()
    assert h.master.exit_code is ExitCode.STOPPED
    assert len(h.fake.spawned) == 2  # nothing respawned while stopping


def test_stop_delay_keeps_serving_with_health_draining_then_drains() -> None:
    h = Harness(make_config(stop_delay=2.5))
    pids = h.boot()
    start = h.fake.clock
    h.fake.signal(signal.SIGTERM)
    h.step()
    assert h.master.health == "draining"  # the balancer is told at once...
    assert all(h.fake.kills_of(pid) == [] for pid in pids)  # ...while workers still serve
    assert h.fake.stopped_queueing == []  # ...and new connections still queue
    h.run_until(lambda: all(h.fake.kills_of(pid) == [FINAL_STOP_SIGNAL] for pid in pids))
    assert h.fake.clock - start == pytest.approx(2.5)
    assert h.fake.stopped_queueing == [start + 2.5]
    for pid in pids:
        h.fake.exit(pid, 0)
    h.step()
    assert h.master.exit_code is ExitCode.STOPPED


def test_a_second_sigterm_ends_the_stop_delay() -> None:
    h = Harness(make_config(stop_delay=60.0))
    pids = h.boot()
    start = h.fake.clock
    h.fake.signal(signal.SIGTERM)
    h.step()
    h.fake.signal(signal.SIGTERM)
    h.step()
    assert all(h.fake.kills_of(pid) == [FINAL_STOP_SIGNAL] for pid in pids)
    assert h.fake.clock == start


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT])
def test_fast_stop(h: Harness, signum: signal.Signals) -> None:
    pids = h.boot()
    start = h.fake.clock
    h.fake.signal(signum)
    h.step()
    assert all(h.fake.kills_of(pid) == [signal.SIGQUIT] for pid in pids)
    h.run_until(lambda: all(signal.SIGKILL in h.fake.kills_of(pid) for pid in pids))
    assert h.fake.clock - start == pytest.approx(FAST_STOP_GRACE)
    for pid in pids:
        h.fake.exit(pid, -signal.SIGKILL)
    h.step()
    assert h.master.exit_code is ExitCode.STOPPED


def test_a_fast_stop_overtakes_a_graceful_one(h: Harness) -> None:
    pids = h.boot()
    h.fake.signal(signal.SIGTERM)
    h.step()
    h.fake.signal(signal.SIGTERM)  # a second TERM changes nothing
    h.step()
    assert h.fake.kills_of(pids[0]) == [FINAL_STOP_SIGNAL]
    h.fake.signal(signal.SIGQUIT)
    h.step()
    assert h.fake.kills_of(pids[0]) == [FINAL_STOP_SIGNAL, signal.SIGQUIT]


def test_reload_starts_new_workers_before_retiring_the_old(h: Harness) -> None:
    """With master.handoff off, the old workers retire by draining (SIGTERM)."""
    old = h.boot()
    new_config = make_config(workers=3, graceful_timeout=5.0, handoff=False)
    h.next_config = new_config
    h.fake.signal(signal.SIGHUP)
    h.step()
    new = [c for c in h.fake.spawned if c.spec.generation == 1]
    assert [(c.spec.index, c.spec.workers, c.spec.config) for c in new] == [
        (1, 3, new_config),
        (2, 3, new_config),
        (3, 3, new_config),
    ]
    assert h.fake.prepared == [(new_config, 3)]
    for child in new[:2]:
        h.fake.ready(child.pid)
    h.step()
    assert h.fake.kills == []  # not every new worker is ready: the old ones keep serving
    assert h.master.config is not new_config
    h.fake.ready(new[2].pid)
    h.step()
    assert sorted(pid for pid, _ in h.fake.kills) == sorted(old)
    assert {sig for _, sig in h.fake.kills} == {signal.SIGTERM}  # the queues are handed over
    assert h.fake.stopped_queueing == []
    assert h.master.config is new_config
    assert h.applied == [new_config]
    assert h.fake.released == [new_config]
    for pid in old:
        h.fake.exit(pid, 0)
    h.step()
    assert sorted(h.live()) == sorted(c.pid for c in new)
    assert len(h.fake.spawned) == 5  # retired workers are not replaced


def test_reload_with_a_bad_config_keeps_the_running_one(
    h: Harness, records: list[logging.LogRecord]
) -> None:
    h.boot()
    h.next_config = ConfigError("server.toml: [master] workers: -1 is outside 0..1024")
    h.fake.signal(signal.SIGHUP)
    h.step()
    assert "workers: -1 is outside" in messages(records)
    assert len(h.fake.spawned) == 2 and h.fake.kills == []
    assert h.master.config is h.config


def test_reload_that_cannot_listen_keeps_the_running_config(h: Harness) -> None:
    h.boot()
    h.next_config = make_config(workers=2)
    h.fake.fail_prepare = OSError(98, "cannot listen on 127.0.0.1:80: Address already in use")
    h.fake.signal(signal.SIGHUP)
    h.step()
    assert len(h.fake.spawned) == 2 and h.fake.kills == []


def test_reload_whose_new_worker_fails_to_boot_is_abandoned(
    h: Harness, records: list[logging.LogRecord]
) -> None:
    old = h.boot()
    h.next_config = make_config(workers=2, app="broken:app")
    h.fake.signal(signal.SIGHUP)
    h.step()
    new = [c.pid for c in h.fake.spawned if c.spec.generation == 1]
    h.fake.ready(new[1])
    h.fake.exit(new[0], 3)
    h.step()
    assert f"reload failed: worker 1 (pid {new[0]}) failed to boot" in messages(records)
    assert h.fake.kills_of(new[1]) == [signal.SIGTERM]
    assert all(h.fake.kills_of(pid) == [] for pid in old)
    assert h.master.config is h.config and h.master.exit_code is None
    h.fake.exit(new[1], 0)
    h.step()
    assert sorted(h.live()) == sorted(old)
    # The running generation still gets replaced when it dies.
    h.fake.exit(old[0], 1)
    h.step()
    assert h.fake.spawned[-1].spec.generation == 0


def test_an_old_worker_dying_during_a_reload_is_replaced_then_retired(h: Harness) -> None:
    old = h.boot()
    h.next_config = make_config(workers=1)
    h.fake.signal(signal.SIGHUP)
    h.step()
    (new,) = (c.pid for c in h.fake.spawned if c.spec.generation == 1)
    h.fake.exit(old[0], 1)
    h.step()
    stand_in = h.fake.spawned[-1]
    assert stand_in.spec.generation == 0 and stand_in.spec.index == 1
    h.fake.ready(new)
    h.step()
    assert h.fake.kills_of(stand_in.pid) == [signal.SIGTERM]  # not serving yet: nothing to move
    assert h.fake.kills_of(old[1]) == []
    assert h.fake.handovers == [(old[1], new)]


def test_a_second_sighup_during_a_reload_reloads_again(h: Harness) -> None:
    h.boot()
    h.next_config = make_config(workers=1, handoff=False)  # with it: test_master_handoff.py
    h.fake.signal(signal.SIGHUP)
    h.step()
    h.fake.signal(signal.SIGHUP)
    h.step()
    assert len(h.fake.spawned) == 3
    h.fake.ready(h.fake.spawned[-1].pid)
    h.step()
    assert [c.spec.generation for c in h.fake.spawned] == [0, 0, 1, 2]


def test_a_silent_worker_is_killed_and_replaced(
    h: Harness, records: list[logging.LogRecord]
) -> None:
    first, second = h.boot()
    start = h.fake.clock
    for _ in range(3):  # the second worker beats every half timeout, the first never
        h.fake.clock += 10.0
        h.fake.beat(second)
        h.step()
    assert h.fake.kills_of(first) == [signal.SIGKILL]
    assert h.fake.clock - start == pytest.approx(20.0, abs=10.0)
    assert h.fake.kills_of(second) == []
    assert "sent no heartbeat" in messages(records)
    h.fake.exit(first, -signal.SIGKILL)
    h.step()
    assert "killed by SIGKILL (by the master: no heartbeat" in messages(records)
    assert h.fake.spawned[-1].spec.index == 1


def test_a_worker_not_ready_within_boot_timeout_stops_the_server(h: Harness) -> None:
    h.master.start()
    first, second = (c.pid for c in h.fake.spawned)
    h.fake.ready(second)
    h.step()
    h.run_until(lambda: h.fake.kills_of(first) == [signal.SIGKILL])
    h.fake.exit(first, -signal.SIGKILL)
    h.step()
    h.fake.exit(second, 0)
    h.step()
    assert h.master.exit_code is ExitCode.BOOT_FAILED


def test_sigusr1_reopens_logs_here_and_in_every_worker(h: Harness) -> None:
    pids = h.boot()
    h.fake.signal(signal.SIGUSR1)
    h.step()
    assert h.reopened == 1
    assert all(h.fake.kills_of(pid) == [signal.SIGUSR1] for pid in pids)


def test_a_failed_fork_is_retried(h: Harness) -> None:
    h.fake.fail_spawn = OSError(11, "Resource temporarily unavailable")
    h.master.start()
    assert h.fake.spawned == []
    h.fake.fail_spawn = None
    h.step()
    assert len(h.fake.spawned) == 2


def test_stop_with_no_worker_left_exits_at_once(h: Harness) -> None:
    h.fake.fail_spawn = OSError(11, "Resource temporarily unavailable")
    h.master.start()
    h.master.stop(fast=False, why="test")
    assert h.master.exit_code is ExitCode.STOPPED
