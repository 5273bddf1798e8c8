"""The password-hash pool: a few threads, and a bounded, fair line of work waiting for them.

A hash (scrypt) costs tens of milliseconds of CPU, so a flood of logins for
unknown names can keep every hash thread busy; with an unbounded first-come line
a real user's login then waits behind all of it. Here:

- at most ``threads`` hashes run at once (the worker's share of the cores);
- at most ``max_waiting`` wait; beyond that a request gets :class:`Busy` at once
  (the client is told "busy, retry" in microseconds instead of waiting seconds);
- waiting work is served round robin over client networks, so one network's
  pile is served one item per turn, like everyone else's;
- in two lanes: work from a network with no recent failures (lane 0) is always
  served before work from networks that failed recently (lane 1), and when the
  line is full it takes the place of the newest lane-1 item of the network with
  the most waiting (that one gets :class:`Busy`). With two threads or more, one
  is kept for lane 0: lane-1 work runs on the others only, so a clean login
  starts at once instead of after a hash already running. Attackers, who fail,
  cannot starve a login from a clean network.

:class:`FairQueue` is the pure line (no trio, no clock); :class:`HashPool` runs
work through it with trio threads. Cheap work (``inline``) never enters either.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

import attrs
import trio

__all__ = ["CLEAN", "SUSPECT", "Busy", "FairQueue", "HashPool", "QueueFull"]

T = TypeVar("T")

#: Lane of work from a network with no recent failures: served first.
CLEAN: Final = 0
#: Lane of work from a network that failed recently.
SUSPECT: Final = 1
_LANES: Final = 2


class QueueFull(Exception):
    """The line is full and nothing in it may be pushed out for the new item."""


class Busy(Exception):
    """The hash pool is full: answer "busy" now rather than wait."""


class FairQueue(Generic[T]):
    """A bounded line of items, each under a key (a client network) and a lane.

    ``pop`` serves lane 0 before lane 1 and, within a lane, one item per key in
    turn (round robin), each key's items in order.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity!r}")
        self.capacity = capacity
        self._lanes: list[OrderedDict[str, deque[T]]] = [OrderedDict() for _ in range(_LANES)]
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def waiting(self, lane: int) -> int:
        return sum(len(items) for items in self._lanes[lane].values())

    def push(self, key: str, lane: int, item: T) -> T | None:
        """Add ``item``; returns the item it pushed out (now refused), if any.

        Raises :class:`QueueFull` when the line is full of work of the same or a
        better lane.
        """
        evicted = None
        if self._size >= self.capacity:
            evicted = self._evict_worse_than(lane)
            if evicted is None:
                raise QueueFull
        self._lanes[lane].setdefault(key, deque()).append(item)
        self._size += 1
        return evicted

    def pop(self) -> T | None:
        """The next item to serve, or None when the line is empty."""
        return self.pop_if(lambda item: True)

    def pop_if(self, allowed: Callable[[T], bool]) -> T | None:
        """The next item to serve if ``allowed(item)``; else None (nothing is taken).

        Only each lane's next item is asked: a refused lane-0 item stops the search,
        so the lane order is never skipped.
        """
        for lane in self._lanes:
            if lane:
                key, items = next(iter(lane.items()))
                if not allowed(items[0]):
                    return None
                item = items.popleft()
                if items:
                    lane.move_to_end(key)  # its next item waits for everyone else's turn
                else:
                    del lane[key]
                self._size -= 1
                return item
        return None

    def discard(self, item: T) -> bool:
        """Take ``item`` out (its requester gave up); False if it is not waiting."""
        for lane in self._lanes:
            for key, items in lane.items():
                try:
                    items.remove(item)
                except ValueError:
                    continue
                if not items:
                    del lane[key]
                self._size -= 1
                return True
        return False

    def has_room(self, lane: int) -> bool:
        """True if an item of ``lane`` would be taken now (room, or worse work to push out)."""
        return self._size < self.capacity or any(self._lanes[lane + 1 :])

    def _evict_worse_than(self, lane: int) -> T | None:
        for worse in range(_LANES - 1, lane, -1):
            keys = self._lanes[worse]
            if keys:
                key = max(keys, key=lambda k: len(keys[k]))  # the biggest pile gives way
                items = keys[key]
                item = items.pop()  # its newest item
                if not items:
                    del keys[key]
                self._size -= 1
                return item
        return None


@attrs.define(eq=False)
class _Ticket:
    lane: int
    event: trio.Event = attrs.Factory(trio.Event)
    granted: bool = False
    refused: bool = False


@attrs.define(eq=False)
class HashPool:
    """``threads`` hash threads and a :class:`FairQueue` of ``max_waiting`` in front of them."""

    threads: int
    max_waiting: int
    _line: FairQueue[_Ticket] = attrs.field(init=False)
    _running: int = attrs.field(init=False, default=0)
    _running_suspect: int = attrs.field(init=False, default=0)
    refused: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if self.threads < 1 or self.max_waiting < 0:
            raise ValueError(f"need threads >= 1, max_waiting >= 0; got {self!r}")
        self._line = FairQueue(self.max_waiting)

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._line)

    @property
    def _suspect_threads(self) -> int:
        return self.threads - 1 if self.threads > 1 else 1

    def _free_for(self, lane: int) -> bool:
        """True if ``lane`` may start a hash now, without waiting."""
        if self._running >= self.threads:
            return False
        if lane == CLEAN:
            return not self._line.waiting(CLEAN)
        return not self._line and self._running_suspect < self._suspect_threads

    def would_refuse(self, lane: int) -> bool:
        """True if work of ``lane`` would get :class:`Busy` now (to refuse before any I/O)."""
        return not self._free_for(lane) and not self._line.has_room(lane)

    async def run(self, key: str, lane: int, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` in a hash thread, once ``key``'s turn in ``lane`` comes.

        Raises :class:`Busy` at once if the line is full, or later if a better
        lane's work took this one's place.
        """
        await self._acquire(key, lane)
        try:
            return await trio.to_thread.run_sync(call, *args)
        finally:
            self._release(lane)

    async def _acquire(self, key: str, lane: int) -> None:
        if self._free_for(lane):
            self._start(lane)
            return
        ticket = _Ticket(lane=lane)
        try:
            evicted = self._line.push(key, lane, ticket)
        except QueueFull:
            self.refused += 1
            raise Busy from None
        if evicted is not None:
            self.refused += 1
            evicted.refused = True
            evicted.event.set()
        try:
            await ticket.event.wait()
        except BaseException:
            if ticket.granted:
                self._release(lane)  # the slot was handed over: pass it on
            elif not ticket.refused:
                self._line.discard(ticket)
            raise
        if ticket.refused:
            raise Busy

    def _start(self, lane: int) -> None:
        self._running += 1
        if lane != CLEAN:
            self._running_suspect += 1

    def _release(self, lane: int) -> None:
        self._running -= 1
        if lane != CLEAN:
            self._running_suspect -= 1
        # Hand free slots to the next in line: clean work first, suspect work while it
        # stays within its threads.
        while self._running < self.threads:
            ticket = self._line.pop_if(
                lambda t: t.lane == CLEAN or self._running_suspect < self._suspect_threads
            )
            if ticket is None:
                return
            self._start(ticket.lane)
            ticket.granted = True
            ticket.event.set()
