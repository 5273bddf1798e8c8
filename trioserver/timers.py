"""Connection time rules: heartbeat deadline, hard lifetime, login deadline, flood, recycle;
and one worker-wide timer for the deadlines of many short-lived connections.

None of these polls. The heartbeat, the hard lifetime and the login deadline are
the deadline of the connection's cancel scope: a ping moves it (``refresh``), and
when it passes, trio cancels the connection's tasks, which is the kick. Before a
login the hard deadline is the login deadline (when that comes first); the login
moves it out to the lifetime's (``logged_in``), so the rule costs no task and no
field but one flag. The flood rule is a
counter checked on each completed packet. The delayed recycle is one task per
worker sleeping until the oldest resting slot is due.

A header that never completes (a client dripping a byte now and then) sends no
valid ping, so the heartbeat deadline closes it: no separate read timeout is
needed for the binary protocol.

HTTP connections keep their deadlines (header, keep-alive, send) with
:class:`ExpiryTimer`: a trio cancel scope entered and left per connection costs
about as much as answering its request (a ``CancelStatus``, trio's deadline heap
and its ``contextlib`` helpers, once more on every deadline move), and a short
connection has little else. The timer is one heap and one task per worker; a
connection's deadline is a float it moves freely.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
from typing import Any, Protocol

import attrs
import trio

from .config import ConnectionSettings
from .nursery_pool import ConnectionPool, Slot
from .reasons import KickReason
from .wakeup import Wakeup

__all__ = ["ConnectionRules", "Expiring", "ExpiryTimer", "RecycleTimer"]

log = logging.getLogger("trioserver.worker")


class Ruled(Protocol):
    """The part of a connection the time rules read and move."""

    scope: trio.CancelScope
    hard_deadline: float
    prelogin: bool
    last_packet_at: float
    flood_count: int


@attrs.frozen
class ConnectionRules:
    """The per-connection time rules of one worker, precomputed from its settings."""

    #: Seconds a connection may go without a refreshing packet (3W + 10), or inf.
    heartbeat_timeout: float
    any_packet_refreshes: bool
    lifetime: float
    flood_check: bool
    flood_interval: float
    flood_kick_counter: int
    #: Seconds a connection may stay without logging in, or inf (off, or no login served).
    login_timeout: float = math.inf

    @classmethod
    def from_settings(cls, s: ConnectionSettings, *, login: bool = False) -> ConnectionRules:
        """The rules ``s`` sets; ``login``: the worker serves login, so the login
        deadline (``login_timeout``) applies."""
        return cls(
            login_timeout=s.login_timeout if login and s.login_timeout > 0 else math.inf,
            heartbeat_timeout=3 * s.heartbeat_wait + 10 if s.heartbeat else math.inf,
            any_packet_refreshes=s.any_packet_refreshes,
            lifetime=s.session_lifetime if s.session_lifetime > 0 else math.inf,
            flood_check=s.flood_check,
            flood_interval=s.flood_interval,
            flood_kick_counter=s.flood_kick_counter,
        )

    def open(self, conn: Ruled, now: float) -> None:
        """Arm a new connection's deadline: heartbeat from now, capped by the lifetime."""
        # Only finite times are stored: an idle connection keeps no float of its own
        # for a rule that is off (memory per connection counts, see benchmarks/).
        if self.login_timeout < self.lifetime:
            conn.hard_deadline = now + self.login_timeout
            conn.prelogin = True
        elif self.lifetime < math.inf:
            conn.hard_deadline = now + self.lifetime
        deadline = min(now + self.heartbeat_timeout, conn.hard_deadline)
        # Never later than a deadline already set: a drain that began before the
        # connection's task ran gave it only a short grace.
        if deadline < conn.scope.deadline:
            conn.scope.deadline = deadline

    def refresh(self, conn: Ruled, now: float) -> None:
        """A refreshing packet arrived: push the heartbeat deadline out again."""
        # The hard deadline first: when the two are equal (both inf, the heartbeat
        # off) min() keeps it, a shared float, instead of a new one per connection.
        conn.scope.deadline = min(conn.hard_deadline, now + self.heartbeat_timeout)

    def logged_in(self, conn: Ruled, now: float) -> None:
        """The connection logged in: the login deadline gives way to the lifetime's.

        The login is as good as a ping, so the heartbeat deadline moves too.
        """
        if not conn.prelogin:
            return
        conn.prelogin = False
        # The login deadline was open + login_timeout; the lifetime's is open + lifetime.
        conn.hard_deadline += self.lifetime - self.login_timeout
        conn.scope.deadline = min(now + self.heartbeat_timeout, conn.hard_deadline)

    def deadline_reason(self, conn: Ruled) -> KickReason:
        """Which rule's deadline fired, once the connection's scope ran out of time."""
        if conn.scope.deadline >= conn.hard_deadline:
            return KickReason.LOGIN_TIMEOUT if conn.prelogin else KickReason.LIFETIME
        return KickReason.HEARTBEAT

    def is_flood(self, conn: Ruled, now: float) -> bool:
        """Account one completed packet; True means it is the one that makes a flood.

        The original's rule: a packet arriving less than ``flood_interval`` after
        the previous one extends the run of fast packets, a slower one resets it;
        the packet that brings the run to ``flood_kick_counter`` is the flood. With
        the defaults (100 ms, 10) ten fast packets pass and the eleventh kicks.
        """
        if now - conn.last_packet_at < self.flood_interval:
            conn.flood_count += 1
            if conn.flood_count >= self.flood_kick_counter:
                return True
        else:
            conn.flood_count = 0
        conn.last_packet_at = now
        return False


class RecycleTimer:
    """Delayed recycle: closed connections' slots rest ``delay`` seconds, then go free.

    The delay is the same for every slot, so the resting slots are already in due
    order: a deque, and one task that sleeps until the oldest is due. At most
    ``max_resting`` slots rest at once (each costs about 130 bytes); past that the
    oldest rest ends early, which is safe: its sequence number has already moved
    on, so nothing queued for its old connection can reach the next one.
    """

    def __init__(self, pool: ConnectionPool, delay: float, max_resting: int = 20_000) -> None:
        if delay < 0:
            raise ValueError(f"recycle delay must be >= 0, got {delay!r}")
        if max_resting < 0:
            raise ValueError(f"max_resting must be >= 0, got {max_resting!r}")
        self._pool = pool
        self._delay = delay
        self._max_resting = max_resting
        #: Rests ended early because ``max_resting`` slots were resting.
        self.ended_early = 0
        self._resting: collections.deque[tuple[float, Slot]] = collections.deque()
        self._wakeup = Wakeup()

    @property
    def delay(self) -> float:
        return self._delay

    def rest(self, slot: Slot) -> None:
        """Release ``slot`` from its connection and start its rest."""
        self._pool.release(slot)
        if self._delay == 0:
            self._pool.recycle(slot)
            return
        resting = self._resting
        resting.append((trio.current_time() + self._delay, slot))
        if len(resting) > self._max_resting:
            self._pool.recycle(resting.popleft()[1])
            self.ended_early += 1
        self._wakeup.wake()

    def recycle_all(self) -> None:
        """End every rest now (the worker is stopping)."""
        while self._resting:
            self._pool.recycle(self._resting.popleft()[1])

    async def run(self) -> None:
        """Return slots to the free list as their rest ends; runs until cancelled."""
        resting = self._resting
        while True:
            if not resting:
                await self._wakeup.wait()
                continue
            due, slot = resting[0]
            if trio.current_time() < due:
                await trio.sleep_until(due)
                continue
            resting.popleft()
            self._pool.recycle(slot)


class Expiring(Protocol):
    """What :class:`ExpiryTimer` keeps the deadline of (an HTTP connection).

    The owner sets ``deadline`` as it likes; moving it later costs nothing more
    (the timer finds out when the earlier time comes), moving it earlier than
    ``armed`` needs :meth:`ExpiryTimer.arm`. ``armed`` and ``timer_entry`` are the
    timer's. ``expire`` is called once the deadline has passed; it must not raise.
    """

    deadline: float
    #: When the timer looks at this owner next (inf: never, it is not armed).
    armed: float
    timer_entry: list[Any] | None

    def expire(self) -> None: ...


class ExpiryTimer:
    """The deadlines of many owners (:class:`Expiring`), kept by one heap and one task.

    ::

        conn.deadline = now + 10.0; timer.arm(conn)   # a new connection
        conn.deadline = now + 15.0                    # later: nothing else to do
        timer.discard(conn)                           # it closed

    Exact: an owner expires when the clock reaches its deadline, not a tick later
    (the task sleeps until the earliest entry's time). Lazy: an entry whose owner
    moved its deadline later is pushed again at the new time when it comes up, so
    a keep-alive request costs a float store, not a heap operation. An entry is
    ``[when, sequence, owner]``; discarding an owner only empties its entry (a
    closed connection is not kept alive by it), and empty entries are dropped
    from the top as the task goes and all at once when they outnumber the live
    ones, so the heap stays under about twice the open connections.
    """

    def __init__(self) -> None:
        self._heap: list[list[Any]] = []
        self._sequence = itertools.count()
        self._empty = 0
        #: When the task wakes next (inf: when an owner is armed).
        self._due = math.inf
        self._sleep: trio.CancelScope | None = None
        self._wakeup = Wakeup()

    def __len__(self) -> int:
        """Owners armed (entries that are not empty)."""
        return len(self._heap) - self._empty

    def arm(self, owner: Expiring) -> None:
        """Make sure ``owner`` expires at its ``deadline`` (call after moving it earlier)."""
        deadline = owner.deadline
        if deadline >= owner.armed:
            return  # its entry comes up no later than the deadline
        old = owner.timer_entry
        if old is not None:
            old[2] = None
            self._empty += 1
        entry = [deadline, next(self._sequence), owner]
        owner.timer_entry = entry
        owner.armed = deadline
        heapq.heappush(self._heap, entry)
        if deadline < self._due:
            self._due = deadline
            if self._sleep is not None:
                self._sleep.deadline = deadline
            else:
                self._wakeup.wake()

    def discard(self, owner: Expiring) -> None:
        """``owner`` is done: it never expires."""
        entry = owner.timer_entry
        if entry is None:
            return
        entry[2] = None
        owner.timer_entry = None
        owner.armed = math.inf
        self._empty += 1
        heap = self._heap
        if self._empty > 64 and 2 * self._empty > len(heap):
            heap[:] = [e for e in heap if e[2] is not None]
            heapq.heapify(heap)
            self._empty = 0

    async def run(self) -> None:
        """Expire owners as their deadlines pass; runs until cancelled."""
        heap = self._heap
        heappop, heappush = heapq.heappop, heapq.heappush
        while True:
            now = trio.current_time()
            while heap:
                entry = heap[0]
                owner = entry[2]
                if owner is None:
                    heappop(heap)
                    self._empty -= 1
                    continue
                if entry[0] > now:
                    break
                heappop(heap)
                if owner.deadline <= now:
                    entry[2] = None
                    owner.timer_entry = None
                    owner.armed = math.inf
                    try:
                        owner.expire()
                    except Exception:
                        log.exception("bug expiring %r", owner)
                else:  # moved later since: look again then
                    entry[0] = owner.armed = owner.deadline
                    heappush(heap, entry)
            if not heap:
                self._due = math.inf
                await self._wakeup.wait()
                continue
            self._due = heap[0][0]
            with trio.CancelScope(deadline=self._due) as self._sleep:
                try:
                    await trio.sleep_forever()
                finally:
                    self._sleep = None
