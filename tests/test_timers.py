"""The time rules on their own: the recycle timer and the expiry timer in virtual time, and
ConnectionRules' arithmetic on a stand-in connection (no worker, no socket)."""

from __future__ import annotations

import math

import attrs
import pytest
import trio
import trio.testing

from trioserver.config import ConnectionSettings
from trioserver.nursery_pool import ConnectionPool, Slot, SlotState
from trioserver.reasons import KickReason
from trioserver.timers import ConnectionRules, ExpiryTimer, RecycleTimer

# -- the expiry timer ----------------------------------------------------------------------------


class Owner:
    """A stand-in for an HTTP connection: notes when (virtual time) it expired."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.armed = math.inf
        self.timer_entry: list[object] | None = None
        self.expired: list[float] = []

    def expire(self) -> None:
        self.expired.append(trio.current_time())


async def test_owners_expire_exactly_at_their_deadlines_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = ExpiryTimer()
    start = trio.current_time()
    owners = [Owner(start + d) for d in (5.0, 3.0, 8.0, 3.0)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run)
        for owner in owners:
            timer.arm(owner)
        assert len(timer) == 4
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert [[t - start for t in o.expired] for o in owners] == [[5.0], [3.0], [8.0], [3.0]]
    assert len(timer) == 0


async def test_a_deadline_moved_later_needs_no_word_and_expires_at_the_new_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The keep-alive path: each request moves the deadline with a float store."""
    timer = ExpiryTimer()
    start = trio.current_time()
    owner = Owner(start + 5.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run)
        timer.arm(owner)
        for step in (2.0, 4.0, 6.0, 8.0):  # moved on before each expiry
            await trio.sleep_until(start + step)
            owner.deadline = trio.current_time() + 5.0
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert [t - start for t in owner.expired] == [13.0]


async def test_a_deadline_moved_earlier_is_armed_again_and_expires_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The drain's first-request grace: the earlier time wakes the sleeping task."""
    timer = ExpiryTimer()
    start = trio.current_time()
    owner, other = Owner(start + 10.0), Owner(start + 20.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run)
        timer.arm(owner)
        timer.arm(other)
        await trio.sleep(1)
        owner.deadline = start + 2.5
        timer.arm(owner)
        timer.arm(owner)  # again: no second entry
        assert len(timer) == 2
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert [t - start for t in owner.expired] == [2.5]
    assert [t - start for t in other.expired] == [20.0]


async def test_an_owner_armed_while_the_timer_has_nothing_wakes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = ExpiryTimer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run)
        await trio.sleep(100)  # the task waits for an owner, with no deadline of its own
        start = trio.current_time()
        owner = Owner(start + 1.5)
        timer.arm(owner)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert [t - start for t in owner.expired] == [1.5]


async def test_discarded_owners_never_expire_and_their_entries_do_not_pile_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Short connections close long before their deadline: 10,000 of them leave a heap
    no bigger than about twice the open ones, and drop their owners at once."""
    timer = ExpiryTimer()
    start = trio.current_time()
    kept = Owner(start + 50.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run)
        timer.arm(kept)
        for n in range(10_000):
            owner = Owner(start + 10.0 + n / 1000)
            timer.arm(owner)
            timer.discard(owner)
            assert owner.timer_entry is None and owner.armed == math.inf
            assert len(timer._heap) <= 2 * len(timer) + 130
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert owner.expired == []
    assert [t - start for t in kept.expired] == [50.0]


async def test_discard_after_expiry_and_twice_is_harmless(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = ExpiryTimer()
    owner = Owner(trio.current_time() + 1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run)
        timer.arm(owner)
        await trio.sleep(2)
        timer.discard(owner)
        timer.discard(owner)
        nursery.cancel_scope.cancel()
    assert len(owner.expired) == 1 and len(timer) == 0


# -- the recycle timer ---------------------------------------------------------------------------


class RecordingPool(ConnectionPool):
    """A pool that notes when (virtual time) each slot went back to the free list."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.recycled: list[tuple[float, int]] = []

    def recycle(self, slot: Slot) -> None:
        super().recycle(slot)
        self.recycled.append((trio.current_time(), slot.index))


def take(pool: ConnectionPool, count: int) -> list[Slot]:
    slots = [pool.acquire() for _ in range(count)]
    assert all(slots)
    return [s for s in slots if s is not None]


def times(pool: RecordingPool, start: float) -> list[tuple[float, int]]:
    """The recycle log relative to ``start``, rounded off the float noise of the clock."""
    return [(round(t - start, 9), index) for t, index in pool.recycled]


async def test_a_slot_rests_exactly_the_delay_then_is_free(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = RecordingPool(1)
    timer = RecycleTimer(pool, 5.0)
    (slot,) = take(pool, 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run)
        start = trio.current_time()
        timer.rest(slot)
        assert (slot.state, slot.sequence) == (SlotState.RESTING, 1)
        await trio.sleep(4.999)
        await trio.testing.wait_all_tasks_blocked()
        assert slot.state is SlotState.RESTING
        await trio.sleep(0.001)
        await trio.testing.wait_all_tasks_blocked()
        assert slot.state is SlotState.FREE
        assert times(pool, start) == [(5.0, 0)]
        assert pool.acquire() is slot
        nursery.cancel_scope.cancel()


async def test_several_slots_are_freed_in_due_order_each_after_its_own_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = RecordingPool(4)
    timer = RecycleTimer(pool, 5.0)
    a, b, c, d = take(pool, 4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run)
        start = trio.current_time()
        timer.rest(c)
        await trio.sleep(1.0)
        timer.rest(a)
        timer.rest(d)  # the same instant: in the order rested
        await trio.sleep(2.5)
        timer.rest(b)
        await trio.sleep(100)
        assert times(pool, start) == [(5.0, 2), (6.0, 0), (6.0, 3), (8.5, 1)]
        assert [s.index for s in take(pool, 4)] == [2, 0, 3, 1]  # the free list's order
        nursery.cancel_scope.cancel()


async def test_the_timer_sleeps_until_a_slot_comes_to_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Nothing resting: it waits for ``rest`` (it does not poll), then times from then."""
    pool = RecordingPool(1)
    timer = RecycleTimer(pool, 2.0)
    (slot,) = take(pool, 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run)
        await trio.sleep(30)
        start = trio.current_time()
        timer.rest(slot)
        await trio.sleep(10)
        assert times(pool, start) == [(2.0, 0)]
        nursery.cancel_scope.cancel()


async def test_delay_zero_frees_the_slot_at_once_without_the_timer_task() -> None:
    pool = RecordingPool(1)
    timer = RecycleTimer(pool, 0)
    (slot,) = take(pool, 1)
    timer.rest(slot)  # no run() task at all
    assert (slot.state, slot.sequence) == (SlotState.FREE, 1)
    assert pool.acquire() is slot


async def test_recycle_all_ends_every_rest_now(autojump_clock: trio.testing.MockClock) -> None:
    pool = RecordingPool(3)
    timer = RecycleTimer(pool, 60.0)
    slots = take(pool, 3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run)
        start = trio.current_time()
        for slot in slots:
            timer.rest(slot)
        await trio.sleep(1)
        timer.recycle_all()
        assert [s.state for s in slots] == [SlotState.FREE] * 3
        assert times(pool, start) == [(1.0, 0), (1.0, 1), (1.0, 2)]
        await trio.sleep(120)  # past the old due times: nothing is recycled twice
        assert len(pool.recycled) == 3
        assert pool.statistics().free == 3
        nursery.cancel_scope.cancel()


async def test_past_max_resting_the_oldest_rest_ends_early(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = RecordingPool(4)
    timer = RecycleTimer(pool, 5.0, max_resting=2)
    a, b, c, d = take(pool, 4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run)
        start = trio.current_time()
        timer.rest(a)
        await trio.sleep(1)
        timer.rest(b)
        assert (timer.ended_early, a.state) == (0, SlotState.RESTING)  # two rest: the bound
        await trio.sleep(1)
        timer.rest(c)  # a third: a's rest ends now, three seconds early
        assert (timer.ended_early, a.state, a.sequence) == (1, SlotState.FREE, 1)
        timer.rest(d)
        assert (timer.ended_early, b.state) == (2, SlotState.FREE)
        await trio.sleep(100)
        assert times(pool, start) == [(2.0, 0), (2.0, 1), (7.0, 2), (7.0, 3)]
        nursery.cancel_scope.cancel()


async def test_max_resting_zero_ends_every_rest_at_once() -> None:
    pool = ConnectionPool(1)
    timer = RecycleTimer(pool, 5.0, max_resting=0)
    (slot,) = take(pool, 1)
    timer.rest(slot)  # no run() task at all
    assert (slot.state, slot.sequence, timer.ended_early) == (SlotState.FREE, 1, 1)


@pytest.mark.parametrize("delay", [-1.0, -1e-9])
def test_a_negative_delay_is_refused(delay: float) -> None:
    with pytest.raises(ValueError, match=repr(delay)):
        RecycleTimer(ConnectionPool(1), delay)


def test_a_negative_max_resting_is_refused() -> None:
    with pytest.raises(ValueError, match="max_resting must be >= 0, got -1"):
        RecycleTimer(ConnectionPool(1), 1.0, max_resting=-1)


def test_rest_releases_the_slot_so_a_second_rest_is_a_double_release() -> None:
    pool = ConnectionPool(1)
    timer = RecycleTimer(pool, 0)
    (slot,) = take(pool, 1)
    timer.rest(slot)
    with pytest.raises(RuntimeError, match="twice"):
        timer.rest(slot)


# -- the connection rules ------------------------------------------------------------------------


@attrs.define
class Ruled:
    """The fields the rules read and move (``timers.Ruled``), and nothing else."""

    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    hard_deadline: float = math.inf
    prelogin: bool = False
    last_packet_at: float = -math.inf
    flood_count: int = 0


DEFAULTS = ConnectionRules.from_settings(ConnectionSettings())


def rules(**changes: object) -> ConnectionRules:
    return attrs.evolve(DEFAULTS, **changes)  # type: ignore[arg-type]


def test_rules_from_the_default_settings() -> None:
    got = ConnectionRules.from_settings(ConnectionSettings())
    assert got == ConnectionRules(
        heartbeat_timeout=70.0,  # 3 x 20 + 10
        any_packet_refreshes=False,
        lifetime=math.inf,  # session_lifetime 0: off
        flood_check=True,
        flood_interval=0.1,
        flood_kick_counter=10,
    )


def test_rules_from_settings_with_the_heartbeat_off_and_a_lifetime() -> None:
    got = ConnectionRules.from_settings(
        ConnectionSettings(heartbeat=False, heartbeat_wait=5.0, session_lifetime=45.0)
    )
    assert (got.heartbeat_timeout, got.lifetime) == (math.inf, 45.0)
    assert (
        ConnectionRules.from_settings(ConnectionSettings(heartbeat_wait=5.0)).heartbeat_timeout
        == 25.0
    )


def test_open_arms_the_heartbeat_from_now() -> None:
    conn = Ruled()
    DEFAULTS.open(conn, 100.0)
    assert conn.scope.deadline == 170.0
    assert conn.hard_deadline == math.inf


def test_open_with_a_lifetime_sets_the_hard_deadline_and_is_capped_by_it() -> None:
    conn = Ruled()
    rules(lifetime=45.0).open(conn, 100.0)
    assert (conn.hard_deadline, conn.scope.deadline) == (145.0, 145.0)
    longer = Ruled()
    rules(lifetime=500.0).open(longer, 100.0)
    assert (longer.hard_deadline, longer.scope.deadline) == (600.0, 170.0)


def test_open_keeps_an_earlier_deadline_a_drain_already_set() -> None:
    """A drain that began before the connection's task ran gave it a short grace:
    arming the heartbeat must not push that out."""
    conn = Ruled()
    conn.scope.deadline = 101.0
    DEFAULTS.open(conn, 100.0)
    assert conn.scope.deadline == 101.0


def test_open_with_every_rule_off_leaves_no_deadline() -> None:
    conn = Ruled()
    rules(heartbeat_timeout=math.inf).open(conn, 100.0)
    assert (conn.scope.deadline, conn.hard_deadline) == (math.inf, math.inf)


def test_refresh_moves_the_heartbeat_out_from_the_packet() -> None:
    conn = Ruled()
    DEFAULTS.open(conn, 100.0)
    DEFAULTS.refresh(conn, 130.0)
    assert conn.scope.deadline == 200.0
    DEFAULTS.refresh(conn, 131.0)
    assert conn.scope.deadline == 201.0


def test_the_lifetime_caps_every_refresh() -> None:
    conn = Ruled()
    capped = rules(lifetime=100.0)
    capped.open(conn, 0.0)
    capped.refresh(conn, 20.0)
    assert conn.scope.deadline == 90.0  # the heartbeat, still before the lifetime
    capped.refresh(conn, 50.0)
    assert conn.scope.deadline == 100.0  # 120 would pass the lifetime: capped
    capped.refresh(conn, 99.0)
    assert conn.scope.deadline == 100.0


def test_deadline_reason_tells_the_heartbeat_from_the_lifetime() -> None:
    conn = Ruled()
    capped = rules(lifetime=100.0)
    capped.open(conn, 0.0)
    assert capped.deadline_reason(conn) is KickReason.HEARTBEAT  # 70 < 100
    capped.refresh(conn, 50.0)
    assert capped.deadline_reason(conn) is KickReason.LIFETIME  # capped at 100
    plain = Ruled()
    DEFAULTS.open(plain, 0.0)
    assert DEFAULTS.deadline_reason(plain) is KickReason.HEARTBEAT
    only_lifetime = rules(heartbeat_timeout=math.inf, lifetime=30.0)
    lasting = Ruled()
    only_lifetime.open(lasting, 0.0)
    assert only_lifetime.deadline_reason(lasting) is KickReason.LIFETIME


def test_ten_fast_packets_pass_and_the_eleventh_floods() -> None:
    conn = Ruled()
    verdicts = [DEFAULTS.is_flood(conn, i * 0.05) for i in range(11)]
    assert verdicts == [False] * 10 + [True]
    assert conn.flood_count == 10


def test_a_slow_packet_resets_the_run() -> None:
    conn = Ruled()
    now = 0.0
    for _ in range(10):
        assert not DEFAULTS.is_flood(conn, now)
        now += 0.05
    assert conn.flood_count == 9
    now += 0.2  # 0.25 after the tenth: slow
    assert not DEFAULTS.is_flood(conn, now)
    assert (conn.flood_count, conn.last_packet_at) == (0, now)
    # The slow packet starts a fresh run: nine fast ones pass, the tenth floods.
    verdicts = [DEFAULTS.is_flood(conn, now + i * 0.05) for i in range(1, 11)]
    assert verdicts == [False] * 9 + [True]


def test_a_packet_exactly_one_interval_later_is_slow() -> None:
    """Less than ``flood_interval`` counts; exactly the interval does not (binary-exact times)."""
    quarter = rules(flood_interval=0.25, flood_kick_counter=2)
    conn = Ruled()
    assert [quarter.is_flood(conn, t) for t in (0.0, 0.25, 0.5, 0.75)] == [False] * 4
    assert conn.flood_count == 0
    assert [quarter.is_flood(conn, t) for t in (0.875, 1.0)] == [False, True]


def test_the_run_length_needed_follows_the_kick_counter() -> None:
    strict = rules(flood_kick_counter=1)
    conn = Ruled()
    assert [strict.is_flood(conn, t) for t in (0.0, 0.01)] == [False, True]
