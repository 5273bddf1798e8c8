"""The connection pool on its own: slots, the FIFO free list, sequences, statistics."""

from __future__ import annotations

import collections

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from trioserver.nursery_pool import ConnectionPool, PoolStatistics, Slot, SlotState


def test_a_new_pool_makes_its_slots_on_demand() -> None:
    pool = ConnectionPool(3)
    assert pool.capacity == 3
    assert list(pool) == []
    assert pool.statistics() == PoolStatistics(
        capacity=3, in_use=0, resting=0, free=3, acquired_total=0, exhausted_total=0, slots=0
    )
    slot = pool.acquire()
    assert slot is not None
    assert (slot.index, slot.sequence, slot.state) == (0, 0, SlotState.IN_USE)
    assert list(pool) == [slot]


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
    other = pool.acquire()  # a resting slot does not count against the capacity...
    assert other is not None and other is not slot  # ...and is not handed out
    pool.release(other)
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


def test_a_free_slot_is_reused_before_a_new_one_is_made() -> None:
    pool = ConnectionPool(5)
    first = pool.acquire()
    assert first is not None and first.index == 0
    pool.release(first)
    pool.recycle(first)
    taken = [pool.acquire() for _ in range(3)]
    assert [s.index for s in taken if s] == [0, 1, 2]
    assert pool.statistics().slots == 3


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
    slot = pool.acquire()
    assert slot is not None
    pool.release(slot)
    pool.recycle(slot)
    with pytest.raises(RuntimeError, match="state free"):
        pool.release(slot)
    assert slot.sequence == 1


@pytest.mark.parametrize("state", [SlotState.FREE, SlotState.IN_USE])
def test_recycling_a_slot_that_is_not_resting_raises(state: SlotState) -> None:
    pool = ConnectionPool(2)
    slot = pool.acquire()
    assert slot is not None
    if state is SlotState.FREE:
        pool.release(slot)
        pool.recycle(slot)
    assert slot.state is state
    before = pool.statistics()
    with pytest.raises(RuntimeError, match=f"that was {state.value}"):
        pool.recycle(slot)
    assert slot.state is state
    assert pool.statistics() == before


def test_an_exhausted_pool_counts_each_refusal_and_resting_slots_do_not_count() -> None:
    pool = ConnectionPool(2)
    pool.acquire()
    second = pool.acquire()
    assert second is not None
    assert pool.acquire() is None
    assert pool.acquire() is None
    pool.release(second)  # resting: room for one more live connection
    assert pool.acquire() is not None
    assert pool.acquire() is None
    assert pool.statistics() == PoolStatistics(
        capacity=2, in_use=2, resting=1, free=0, acquired_total=3, exhausted_total=3, slots=3
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

    CAPACITY = 3

    def __init__(self) -> None:
        super().__init__()
        self.pool = ConnectionPool(self.CAPACITY)
        self.made = 0
        self.free: collections.deque[int] = collections.deque()
        self.in_use: set[int] = set()
        self.resting: set[int] = set()
        self.sequence: list[int] = []
        self.acquired = 0
        self.exhausted = 0

    def slot(self, index: int) -> Slot:
        return list(self.pool)[index]

    @rule()
    def acquire(self) -> None:
        slot = self.pool.acquire()
        if len(self.in_use) >= self.CAPACITY:
            assert slot is None
            self.exhausted += 1
            return
        if self.free:
            expected = self.free.popleft()
        else:
            expected = self.made
            self.made += 1
            self.sequence.append(0)
        assert slot is not None and slot.index == expected
        self.in_use.add(expected)
        self.acquired += 1

    @precondition(lambda self: self.in_use)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(sorted(self.in_use)))
        self.pool.release(self.slot(index))
        self.in_use.remove(index)
        self.resting.add(index)
        self.sequence[index] += 1

    @precondition(lambda self: self.resting)
    @rule(data=st.data())
    def recycle(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(sorted(self.resting)))
        self.pool.recycle(self.slot(index))
        self.resting.remove(index)
        self.free.append(index)

    @precondition(lambda self: self.made)
    @rule(data=st.data())
    def misuse(self, data: st.DataObject) -> None:
        """Release a slot not in use, or recycle one not resting: refused, nothing changes."""
        index = data.draw(st.integers(0, self.made - 1))
        slot = self.slot(index)
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
        slots = list(self.pool)
        assert [s.index for s in slots] == list(range(self.made))
        assert [s.state for s in slots] == [states[i] for i in range(self.made)]
        assert [s.sequence for s in slots] == self.sequence
        assert self.pool.statistics() == PoolStatistics(
            capacity=self.CAPACITY,
            in_use=len(self.in_use),
            resting=len(self.resting),
            free=self.CAPACITY - len(self.in_use),
            acquired_total=self.acquired,
            exhausted_total=self.exhausted,
            slots=self.made,
        )


PoolAgainstAModel.TestCase.settings = settings(max_examples=200, stateful_step_count=40)
test_pool_against_a_model = PoolAgainstAModel.TestCase
