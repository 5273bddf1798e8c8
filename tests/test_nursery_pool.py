"""The connection pool on its own: slots, the FIFO free list, sequences, statistics."""

from __future__ import annotations

import collections

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from trioserver.nursery_pool import ConnectionPool, PoolStatistics, SlotState


def test_a_new_pool_has_every_slot_free_in_index_order() -> None:
    pool = ConnectionPool(3)
    assert pool.capacity == 3
    assert [(s.index, s.sequence, s.state) for s in pool] == [
        (i, 0, SlotState.FREE) for i in range(3)
    ]
    assert pool.statistics() == PoolStatistics(
        capacity=3, in_use=0, resting=0, free=3, acquired_total=0, exhausted_total=0
    )


@pytest.mark.parametrize("capacity", [0, -1])
def test_a_pool_needs_at_least_one_slot(capacity: int) -> None:
    with pytest.raises(ValueError, match=repr(capacity)):
        ConnectionPool(capacity)


def test_acquire_release_recycle_cycles_a_slot_and_bumps_its_sequence() -> None:
    pool = ConnectionPool(1)
    slot = pool.acquire()
    assert slot is not None
    assert (slot.state, slot.sequence) == (SlotState.IN_USE, 0)
    pool.release(slot)
    assert (slot.state, slot.sequence) == (SlotState.RESTING, 1)
    assert pool.acquire() is None  # resting is not free
    pool.recycle(slot)
    assert (slot.state, slot.sequence) == (SlotState.FREE, 1)  # recycling keeps the sequence
    assert pool.acquire() is slot


def test_freed_slots_are_reused_in_the_order_they_were_freed() -> None:
    """FIFO: the slot vacated last is reused last, whatever its index."""
    pool = ConnectionPool(4)
    slots = [pool.acquire() for _ in range(4)]
    assert [s.index for s in slots if s is not None] == [0, 1, 2, 3]
    for index in (2, 0, 3):
        slot = slots[index]
        assert slot is not None
        pool.release(slot)
        pool.recycle(slot)
    again = [pool.acquire() for _ in range(3)]
    assert [s.index for s in again if s is not None] == [2, 0, 3]


def test_a_slot_freed_while_others_are_free_goes_behind_them() -> None:
    pool = ConnectionPool(3)
    first = pool.acquire()
    assert first is not None and first.index == 0
    pool.release(first)
    pool.recycle(first)
    assert [s.index for s in (pool.acquire(), pool.acquire(), pool.acquire()) if s] == [1, 2, 0]


def test_releasing_twice_raises_and_changes_nothing() -> None:
    pool = ConnectionPool(2)
    slot = pool.acquire()
    assert slot is not None
    pool.release(slot)
    before = pool.statistics()
    with pytest.raises(RuntimeError, match="released slot 0 twice"):
        pool.release(slot)
    assert (slot.sequence, slot.state) == (1, SlotState.RESTING)
    assert pool.statistics() == before


def test_releasing_a_free_slot_raises() -> None:
    pool = ConnectionPool(1)
    (slot,) = pool
    with pytest.raises(RuntimeError, match="state free"):
        pool.release(slot)
    assert slot.sequence == 0


@pytest.mark.parametrize("state", [SlotState.FREE, SlotState.IN_USE])
def test_recycling_a_slot_that_is_not_resting_raises(state: SlotState) -> None:
    pool = ConnectionPool(2)
    slot = pool.acquire() if state is SlotState.IN_USE else next(iter(pool))
    assert slot is not None and slot.state is state
    before = pool.statistics()
    with pytest.raises(RuntimeError, match=f"that was {state.value}"):
        pool.recycle(slot)
    assert slot.state is state
    assert pool.statistics() == before


def test_an_exhausted_pool_counts_each_refusal() -> None:
    pool = ConnectionPool(2)
    pool.acquire()
    resting = pool.acquire()
    assert resting is not None
    pool.release(resting)
    assert pool.acquire() is None
    assert pool.acquire() is None
    assert pool.statistics() == PoolStatistics(
        capacity=2, in_use=1, resting=1, free=0, acquired_total=2, exhausted_total=2
    )


def test_statistics_is_a_frozen_snapshot() -> None:
    pool = ConnectionPool(2)
    snapshot = pool.statistics()
    pool.acquire()
    assert snapshot.in_use == 0 and snapshot.free == 2  # taken before the acquire
    with pytest.raises(AttributeError):
        snapshot.in_use = 5  # type: ignore[misc]


class PoolAgainstAModel(RuleBasedStateMachine):
    """Random acquire/release/recycle sequences against a list-and-deque model."""

    CAPACITY = 5

    def __init__(self) -> None:
        super().__init__()
        self.pool = ConnectionPool(self.CAPACITY)
        self.slots = list(self.pool)
        self.free: collections.deque[int] = collections.deque(range(self.CAPACITY))
        self.in_use: set[int] = set()
        self.resting: set[int] = set()
        self.sequence = [0] * self.CAPACITY
        self.acquired = 0
        self.exhausted = 0

    @rule()
    def acquire(self) -> None:
        slot = self.pool.acquire()
        if not self.free:
            assert slot is None
            self.exhausted += 1
            return
        expected = self.free.popleft()
        assert slot is self.slots[expected]
        self.in_use.add(expected)
        self.acquired += 1

    @precondition(lambda self: self.in_use)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(sorted(self.in_use)))
        self.pool.release(self.slots[index])
        self.in_use.remove(index)
        self.resting.add(index)
        self.sequence[index] += 1

    @precondition(lambda self: self.resting)
    @rule(data=st.data())
    def recycle(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(sorted(self.resting)))
        self.pool.recycle(self.slots[index])
        self.resting.remove(index)
        self.free.append(index)

    @rule(index=st.integers(0, CAPACITY - 1))
    def misuse(self, index: int) -> None:
        """Release a slot not in use, or recycle one not resting: refused, nothing changes."""
        slot = self.slots[index]
        before = (self.pool.statistics(), slot.sequence, slot.state)
        if index not in self.in_use:
            with pytest.raises(RuntimeError):
                self.pool.release(slot)
        if index not in self.resting:
            with pytest.raises(RuntimeError):
                self.pool.recycle(slot)
        assert (self.pool.statistics(), slot.sequence, slot.state) == before

    @invariant()
    def matches_the_model(self) -> None:
        states = {i: SlotState.FREE for i in self.free}
        states.update({i: SlotState.IN_USE for i in self.in_use})
        states.update({i: SlotState.RESTING for i in self.resting})
        assert [s.state for s in self.slots] == [states[i] for i in range(self.CAPACITY)]
        assert [s.sequence for s in self.slots] == self.sequence
        assert self.pool.statistics() == PoolStatistics(
            capacity=self.CAPACITY,
            in_use=len(self.in_use),
            resting=len(self.resting),
            free=len(self.free),
            acquired_total=self.acquired,
            exhausted_total=self.exhausted,
        )


PoolAgainstAModel.TestCase.settings = settings(max_examples=200, stateful_step_count=40)
test_pool_against_a_model = PoolAgainstAModel.TestCase
