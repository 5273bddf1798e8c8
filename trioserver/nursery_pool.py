"""The connection pool: slots, free list, sequence numbers.

A slot cycles FREE → IN_USE → RESTING → FREE. Its ``sequence`` is bumped when
the connection holding it closes, so anything still queued for that connection
carries an old sequence and is recognised as stale, however long it waited and
whoever holds the slot next. The resting period (the delayed recycle of
``timers.RecycleTimer``) keeps a slot out of the free list a while longer, so a
slot changes hands at a human-readable pace in logs and statistics.

The pool admits at most ``capacity`` live connections (``server.max_connections``);
resting slots do not count against it. When every slot made so far is in use
or resting, a new one is made, so a burst of short connections (a reconnect
storm, ``Connection: close`` traffic) is never refused while fewer than
``capacity`` are open: the recycle delay must not turn into a connection-rate
limit. The memory of resting slots is bounded by ``timers.RecycleTimer``'s
``max_resting`` (the oldest rest ends early; the sequence number keeps that safe).

A connection holds a slot for its whole life (``connection.Connection``); the
slot, not the connection, is what the pool counts and recycles.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterator

import attrs

__all__ = ["ConnectionPool", "PoolStatistics", "Slot", "SlotState"]


class SlotState(enum.Enum):
    FREE = "free"
    IN_USE = "in_use"
    RESTING = "resting"


@attrs.define(eq=False, slots=True)
class Slot:
    """One place in the pool; ``sequence`` changes each time its occupant leaves."""

    index: int
    sequence: int = 0
    state: SlotState = SlotState.FREE


@attrs.frozen
class PoolStatistics:
    #: Most live connections admitted at once.
    capacity: int
    in_use: int
    resting: int
    #: Live connections that may still be admitted (``capacity - in_use``).
    free: int
    acquired_total: int
    #: Connections refused because ``capacity`` were live.
    exhausted_total: int
    #: Slots made so far (in use, resting or free).
    slots: int = 0


class ConnectionPool:
    """Slots for at most ``capacity`` live connections, with a FIFO free list.

    FIFO, not LIFO, so the slot just vacated is the last to be reused: a stale
    message's slot has the longest possible time to change hands visibly.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"pool capacity must be at least 1, got {capacity!r}")
        self._capacity = capacity
        self._slots: list[Slot] = []
        self._free: collections.deque[Slot] = collections.deque()
        self._in_use = 0
        self._resting = 0
        self._acquired_total = 0
        self._exhausted_total = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def free(self) -> int:
        """Live connections that may still be admitted (``capacity - in_use``)."""
        return self._capacity - self._in_use

    def __iter__(self) -> Iterator[Slot]:
        return iter(self._slots)

    def acquire(self) -> Slot | None:
        """A slot for a new connection, or None when ``capacity`` are live (counted)."""
        if self._in_use >= self._capacity:
            self._exhausted_total += 1
            return None
        if self._free:
            slot = self._free.popleft()
        else:
            slot = Slot(len(self._slots))
            self._slots.append(slot)
        slot.state = SlotState.IN_USE
        self._in_use += 1
        self._acquired_total += 1
        return slot

    def release(self, slot: Slot) -> None:
        """The occupant left: bump the sequence, and let the slot rest."""
        if slot.state is not SlotState.IN_USE:
            raise RuntimeError(f"released slot {slot.index} twice (state {slot.state.value})")
        slot.sequence += 1
        slot.state = SlotState.RESTING
        self._in_use -= 1
        self._resting += 1

    def recycle(self, slot: Slot) -> None:
        """The rest is over: the slot goes to the back of the free list."""
        if slot.state is not SlotState.RESTING:
            raise RuntimeError(f"recycled slot {slot.index} that was {slot.state.value}")
        slot.state = SlotState.FREE
        self._resting -= 1
        self._free.append(slot)

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            capacity=self._capacity,
            in_use=self._in_use,
            resting=self._resting,
            free=self._capacity - self._in_use,
            acquired_total=self._acquired_total,
            exhausted_total=self._exhausted_total,
            slots=len(self._slots),
        )
