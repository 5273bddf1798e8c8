"""The master's handoff rules on a reload, through the fake system: who gets which channel,
when, what falls back to SIGTERM, and how the results are logged and counted."""

from __future__ import annotations

import logging
import signal

import pytest
from fake_system import FakeSystem
from test_master_logic import Harness, make_config, messages

from trioserver.handoff_counts import HandoffCounts
from trioserver.ops.metrics import Gatherer
from trioserver.prefork.handoff import HandoffRun, handoff_targets
from trioserver.prefork.master import Master


@pytest.fixture
def h() -> Harness:
    return Harness(make_config())


def reload_to(h: Harness, workers: int, **master: object) -> list[int]:
    """SIGHUP onto ``workers`` workers; make them all ready; their pids (by slot)."""
    h.next_config = make_config(workers=workers, **master)
    h.fake.signal(signal.SIGHUP)
    h.step()
    new = [c for c in h.fake.spawned if c.spec.generation == h.master._next_generation - 1]
    for child in new:
        h.fake.ready(child.pid)
    h.step()
    return [c.pid for c in sorted(new, key=lambda c: c.spec.index)]


def result(moved: int, seconds: float = 0.25, **drained: int) -> bytes:
    return HandoffCounts(moved, drained, 0, seconds).to_json()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (2, 2, [(1, 1), (2, 2)]),
        (4, 2, [(1, 1), (2, 2), (3, 1), (4, 2)]),  # slot i of 4 is served by slot i mod 2 now
        (1, 3, [(1, 1)]),  # new slots 2 and 3 adopt nothing
        (3, 1, [(1, 1), (2, 1), (3, 1)]),
    ],
)
def test_each_old_slot_hands_to_the_new_slot_that_serves_its_sockets(
    old: int, new: int, expected: list[tuple[int, int]]
) -> None:
    olds = [(i, 100 + i) for i in range(1, old + 1)]
    news = {i: 200 + i for i in range(1, new + 1)}
    got = handoff_targets(olds, news)
    assert got == [(100 + o, 200 + n) for o, n in expected]


def test_reload_hands_the_connections_over_once_every_new_worker_serves(h: Harness) -> None:
    old = h.boot()
    h.next_config = make_config(workers=2)
    h.fake.signal(signal.SIGHUP)
    h.step()
    new = [c for c in h.fake.spawned if c.spec.generation == 1]
    h.fake.ready(new[0].pid)
    h.step()
    assert h.fake.handovers == [] and h.fake.kills == []  # one new worker still boots
    h.fake.ready(new[1].pid)
    h.step()
    assert h.fake.handovers == [(old[0], new[0].pid), (old[1], new[1].pid)]
    assert h.fake.kills == []  # not SIGTERM: they hand over, then exit by themselves
    assert all(h.master.workers[pid].retiring for pid in old)
    # The graceful_timeout backstop still applies.
    h.fake.clock += 30.0
    h.step()
    assert {sig for _, sig in h.fake.kills} == {signal.SIGKILL}


def test_more_old_workers_than_new_each_get_a_channel_to_the_same_new_one(h: Harness) -> None:
    old = h.boot()
    (new,) = reload_to(h, 1)
    assert h.fake.handovers == [(old[0], new), (old[1], new)]


def test_more_new_workers_than_old_the_extra_ones_adopt_nothing(h: Harness) -> None:
    old = h.boot()
    new = reload_to(h, 3)
    assert h.fake.handovers == [(old[0], new[0]), (old[1], new[1])]


def test_an_old_worker_the_command_cannot_reach_drains_instead(h: Harness) -> None:
    old = h.boot()
    h.fake.unreachable.add(old[1])
    new = reload_to(h, 2)
    assert h.fake.handovers == [(old[0], new[0])]
    assert h.fake.kills == [(old[1], signal.SIGTERM)]


def test_handoff_off_in_the_new_config_drains_as_before(h: Harness) -> None:
    old = h.boot()
    reload_to(h, 2, handoff=False)
    assert h.fake.handovers == []
    assert sorted(h.fake.kills) == sorted((pid, signal.SIGTERM) for pid in old)


def test_the_results_are_logged_and_counted(records: list[logging.LogRecord]) -> None:
    gatherer = Gatherer(wall_clock=0.0)
    h = Harness(make_config())
    h.master = Master(h.config, h.fake, load_config=h._load, gatherer=gatherer)
    old = h.boot()
    reload_to(h, 2)
    h.fake.clock += 0.5
    h.fake.handed_over(old[0], result(480, tls=12, http=8))
    h.step()
    text = messages(records)
    assert f"worker 1 (pid {old[0]}) handed over in 0.250 s: 480 moved, 20 drained " in text
    assert "(tls 12, http 8), 0 failed" in text
    assert "handoff done" not in text
    h.fake.clock += 0.25
    # The second one's result arrives with its death (still in its pipe at the reap).
    h.fake.exit(old[1], 0, handoffs=(result(500),))
    h.step()
    text = messages(records)
    assert "reload: handoff done in 0.750 s: 980 moved, 20 drained (tls 12, http 8), 0 failed" in (
        text
    )
    assert gatherer.handoffs.moved == 980
    assert gatherer.handoffs.drained == {"tls": 12, "http": 8}
    assert gatherer.handoffs.handoffs == 1 and gatherer.handoffs.last_seconds == 0.75
    page = gatherer.render()
    assert "trioserver_reload_handoffs_total 1" in page
    assert "trioserver_reload_handoff_last_seconds 0.75" in page
    assert '"moved": 980' in gatherer.status_json(health="serving", master_pid=1).decode()


def test_an_old_worker_that_dies_without_a_report_ends_the_handoff_too(
    h: Harness, records: list[logging.LogRecord]
) -> None:
    old = h.boot()
    reload_to(h, 2)
    h.fake.handed_over(old[0], result(10))
    h.fake.exit(old[1], -9)
    h.step()
    assert (
        "handoff done in 0.000 s: 10 moved, 0 drained, 0 failed; 1 old workers exited "
        "without a report" in messages(records)
    )
    assert len(h.fake.spawned) == 4  # retiring: not replaced


def test_a_malformed_result_is_logged_not_counted(
    h: Harness, records: list[logging.LogRecord]
) -> None:
    old = h.boot()
    reload_to(h, 2)
    h.fake.handed_over(old[0], b'{"moved": -1}')
    h.step()
    assert "sent a malformed handoff result" in messages(records)


def test_a_new_worker_killed_mid_handoff_is_replaced_and_adopts_nothing(h: Harness) -> None:
    """The reload is done once the new workers serve; a death after that is a crash of the
    running generation: replaced at once, and the old worker drains what it still holds."""
    old = h.boot()
    new = reload_to(h, 2)
    h.fake.exit(new[0], -9)
    h.step()
    replacement = h.fake.spawned[-1]
    assert replacement.spec.generation == 1 and replacement.spec.index == 1
    assert h.master.exit_code is None
    assert h.fake.handovers == [(old[0], new[0]), (old[1], new[1])]  # none to the replacement
    assert all(h.fake.kills_of(pid) == [] for pid in old)  # they finish their handoff
    assert h.master._handoffs[0].pending == set(old)


def test_an_aborted_reload_hands_nothing_over(h: Harness) -> None:
    old = h.boot()
    h.next_config = make_config(workers=2)
    h.fake.signal(signal.SIGHUP)
    h.step()
    new = [c.pid for c in h.fake.spawned if c.spec.generation == 1]
    h.fake.ready(new[1])
    h.fake.exit(new[0], 3)
    h.step()
    assert h.fake.handovers == []
    assert all(h.fake.kills_of(pid) == [] for pid in old)


def test_handoff_run_counts_each_old_worker_once() -> None:
    run = HandoffRun(1, 0.0, {1, 2})
    run.reported(1, HandoffCounts(3, {"tls": 1}))
    run.reported(1, HandoffCounts(3))
    run.gone(1)
    assert run.total == HandoffCounts(3, {"tls": 1}) and not run.done
    run.gone(2)
    assert run.done and run.unreported == 1


def test_handoff_counts_round_trip_and_refuse_garbage() -> None:
    r = HandoffCounts(5, {"tls": 2}, 1, 0.125)
    assert HandoffCounts.from_json(r.to_json()) == r
    for bad in (b"[]", b'{"moved": "5", "seconds": 0}', b'{"kept": {"tls": -1}, "seconds": 0}',
                b'{"seconds": true}', b"{}"):  # fmt: skip
        with pytest.raises(ValueError):
            HandoffCounts.from_json(bad)


def test_fake_system_is_a_system() -> None:
    from trioserver.prefork.procs import System

    system: System = FakeSystem()
    assert system.hand_over


def test_a_sighup_during_a_handoff_reloads_once_it_has_ended(h: Harness) -> None:
    old = h.boot()
    reload_to(h, 2)
    h.fake.signal(signal.SIGHUP)
    h.step()
    assert len(h.fake.spawned) == 4  # the new workers are still adopting
    h.fake.handed_over(old[0], result(1))
    h.step()
    assert len(h.fake.spawned) == 4
    h.fake.exit(old[1], 0, handoffs=(result(1),))
    h.step()
    assert [c.spec.generation for c in h.fake.spawned] == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize(
    ("graceful", "drain", "expected"),
    [(30.0, 10.0, (19.5, 10.0)), (10.0, 10.0, (4.5, 5.0)), (1.0, 10.0, (0.0, 0.5))],
)
def test_a_handoff_and_its_drain_fit_in_graceful_timeout(
    graceful: float, drain: float, expected: tuple[float, float]
) -> None:
    from trioserver.config import Config
    from trioserver.prefork.child import handoff_budget

    config = Config().replace(master__graceful_timeout=graceful, server__drain_timeout=drain)
    assert handoff_budget(config) == expected
