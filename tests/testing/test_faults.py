"""Fault records and seeded plans: validated values, replayable from the seed."""

from __future__ import annotations

import pytest

from trioserver.testing import Delay, FaultPlan, RandomSplit, Reset, Split, StopReading


def test_a_random_plan_replays_from_its_seed() -> None:
    plan = FaultPlan.random(1234, reset=0.3, stop_reading=0.3, half_close=0.3)
    first = [plan.faults_for(key) for key in range(500)]
    # keys asked in another order, from another plan object: the same faults
    again = FaultPlan.random(1234, reset=0.3, stop_reading=0.3, half_close=0.3)
    assert [again.faults_for(key) for key in reversed(range(500))] == first[::-1]
    assert first != [FaultPlan.random(1235).faults_for(key) for key in range(500)]
    kinds = {type(fault).__name__ for faults in first for fault in faults}
    assert kinds == {"RandomSplit", "Delay", "StopReading", "Reset", "HalfClose"}


def test_changing_one_rate_keeps_the_other_kinds() -> None:
    base = FaultPlan.random(9, reset=0.0)
    more = FaultPlan.random(9, reset=1.0)
    for key in range(100):
        kept = [f for f in more.faults_for(key) if not isinstance(f, Reset)]
        assert tuple(kept) == base.faults_for(key)


def test_fixed_faults_win_over_rates() -> None:
    plan = FaultPlan(seed=1, fixed={3: [Split((1,))]}, rates=FaultPlan.random(1).rates)
    assert plan.faults_for(3) == (Split((1,)),)
    assert FaultPlan().faults_for(3) == ()


@pytest.mark.parametrize(
    "make",
    [
        lambda: Split(()),
        lambda: Split((0,)),
        lambda: RandomSplit(5, 2),
        lambda: Delay(-1.0),
        lambda: Delay(float("nan")),
        lambda: Delay(0.1, direction="sideways"),  # type: ignore[arg-type]
        lambda: StopReading(window=0),
        lambda: FaultPlan.random(1, reset=1.5),
    ],
)
def test_bad_values_are_refused_with_the_value(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]
