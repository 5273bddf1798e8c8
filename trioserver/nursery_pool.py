"""The fixed-capacity connection pool: slots, free list, sequence numbers, ``Connection``.

Slots are allocated once, up front (the original's connection pool), and cycle
FREE → IN_USE → RESTING → FREE. A slot's ``sequence`` is bumped when the
connection holding it closes, so anything still queued for that connection
carries an old sequence and is recognised as stale, however long it waited and
whoever holds the slot next. The resting period (the delayed recycle of
``timers.RecycleTimer``) keeps a slot out of the free list a while longer, so a
slot changes hands at a human-readable pace in logs and statistics.

A ``Connection`` is one accepted stream's state: its inbox (packets waiting for
a handler), its outbox (replies waiting for the writer), its cancel scope (a
kick is a cancellation; the heartbeat is that scope's deadline) and its
flood-rule counters. Only the worker creates them.
"""

from __future__ import annotations

import collections
import enum
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import trio

from .reasons import KickReason

if TYPE_CHECKING:
    from .framer import Packet

__all__ = [
    "Connection",
    "ConnectionPool",
    "NonBlockingSend",
    "PoolStatistics",
    "Slot",
    "SlotState",
    "Wakeup",
]


@runtime_checkable
class NonBlockingSend(Protocol):
    """A stream that can also take bytes without waiting, as a non-blocking socket's ``send``.

    ``send_nowait(data)`` accepts what fits now and returns how many bytes it took
    (0 if none); it never waits and is not a checkpoint. Like ``send_all`` it
    raises ``trio.BrokenResourceError`` or ``trio.ClosedResourceError`` once the
    stream cannot send. The worker writes replies to such a stream the way it
    writes to a socket: directly, with a writer task only for what did not fit.
    """

    def send_nowait(self, data: bytes) -> int: ...


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
    capacity: int
    in_use: int
    resting: int
    free: int
    acquired_total: int
    exhausted_total: int


class ConnectionPool:
    """A fixed number of slots with a FIFO free list.

    FIFO, not LIFO, so the slot just vacated is the last to be reused: a stale
    message's slot has the longest possible time to change hands visibly.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"pool capacity must be at least 1, got {capacity!r}")
        self._slots = [Slot(i) for i in range(capacity)]
        self._free: collections.deque[Slot] = collections.deque(self._slots)
        self._in_use = 0
        self._resting = 0
        self._acquired_total = 0
        self._exhausted_total = 0

    @property
    def capacity(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[Slot]:
        return iter(self._slots)

    def acquire(self) -> Slot | None:
        """A free slot, or None when every slot is in use or resting (counted)."""
        if not self._free:
            self._exhausted_total += 1
            return None
        slot = self._free.popleft()
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
            capacity=len(self._slots),
            in_use=self._in_use,
            resting=self._resting,
            free=len(self._free),
            acquired_total=self._acquired_total,
            exhausted_total=self._exhausted_total,
        )


class Wakeup:
    """Wake one parked task; the cheapest 'something changed, look again'.

    Edge-triggered: trio is cooperative, so a task that checks its condition and
    then parks cannot miss a ``wake()`` made after the check.
    """

    __slots__ = ("_task",)

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None

    async def wait(self) -> None:
        if self._task is not None:
            raise trio.BusyResourceError("another task is already waiting on this Wakeup")
        self._task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def wake(self) -> None:
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)

    @property
    def waiting(self) -> bool:
        return self._task is not None


@attrs.define(eq=False, slots=True, repr=False)
class Connection:
    """One accepted stream: inbox, outbox, cancel scope and rule counters."""

    slot: Slot
    sequence: int
    #: The connection as a trio stream (in-memory tests, HTTP), or None when the
    #: worker drives the socket in ``raw`` itself.
    stream: trio.abc.Stream | None
    peer: str
    #: The connection's whole life; a kick cancels it, the heartbeat is its deadline.
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    #: Packets waiting for a handler task; a handler takes the whole list at once.
    inbox: list[Packet] = attrs.Factory(list)
    #: True while the connection sits in the message queue or a handler drains it.
    scheduled: bool = False
    #: False once the peer sent EOF or the worker stopped reading.
    reading: bool = True
    kick_reason: KickReason | None = None
    #: Set when the reader stopped for a rule (flood, bad length): what was already
    #: read is still answered, then the connection closes and this reason is counted.
    finish_reason: KickReason | None = None
    #: True once the peer reset or vanished (not a kick: nothing to count).
    peer_gone: bool = False
    #: Set by a stopping worker: read no more, finish, close.
    draining: bool = False
    #: True when a drain closed the connection while it waited idle (not a kick).
    drained: bool = False
    #: True while the reader waits for bytes (a drain may then stop it at once).
    receiving: bool = False
    #: True once any bytes arrived: a drain gives a connection without any a moment
    #: for its first request instead of closing it under the client's feet.
    received: bool = False
    #: True once the peer sent EOF (a half-close).
    peer_eof: bool = False
    #: The connection's socket, when the worker drives one directly: it is read
    #: and written without blocking, waiting on trio only when it must.
    raw: socket.socket | None = None
    #: The scope of the writer task, which exists only while a send has to wait.
    writer_scope: trio.CancelScope | None = None
    #: Replies waiting to be sent, and the reply count / bytes not yet sent.
    outbox: list[bytes] = attrs.Factory(list)
    pending_replies: int = 0
    pending_bytes: int = 0
    #: True while a writer task sends what a non-blocking send could not.
    writer_running: bool = False
    #: True while plain handlers run: their replies are sent together afterwards.
    batching: bool = False
    #: True while the connection waits in the worker's deferred-flush list.
    flush_queued: bool = False
    #: Wakes the connection's own task: inbox space, or work finished.
    wakeup: Wakeup = attrs.Factory(Wakeup)
    #: Flood rule: arrival time of the previous packet and the fast-packet run length.
    last_packet_at: float = float("-inf")
    flood_count: int = 0
    #: Hard session-lifetime deadline (inf when off); the heartbeat never extends past it.
    hard_deadline: float = float("inf")
    #: Drop reasons already logged for this connection (each logged once).
    logged_drops: set[Any] | None = None
    #: The authenticated user, set by the login handler.
    user: str | None = None
    #: The application's own per-connection state (``Context.state``), made on first use.
    state: dict[str, Any] | None = None

    @property
    def stale(self) -> bool:
        """True once this connection closed (its slot's sequence moved on)."""
        return self.sequence != self.slot.sequence

    @property
    def id(self) -> str:
        """``slot#sequence``: unique among the worker's connections, stable in logs."""
        return f"{self.slot.index}#{self.sequence}"

    def __repr__(self) -> str:
        return f"<Connection {self.id} from {self.peer}>"

    def settle(self) -> None:
        """Some work for this connection finished: wake its task, and during a drain
        close it once it is idle in a receive (a busy reader stops by itself)."""
        self.wakeup.wake()
        if self.draining and self.receiving and self.received and not self.busy:
            self.drained = True
            self.scope.cancel()

    def kick(self, reason: KickReason) -> None:
        """Close the connection now; the first reason given is the one counted."""
        if self.kick_reason is None:
            self.kick_reason = reason
        self.scope.cancel()

    @property
    def busy(self) -> bool:
        """Something is still queued, being handled, or being sent."""
        return bool(self.scheduled or self.inbox or self.outbox or self.writer_running)
