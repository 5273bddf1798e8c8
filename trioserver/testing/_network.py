"""A simulated connection: two in-memory stream ends with faults applied on the wire.

Each direction is a ``_Pipe`` holding written chunks with their arrival times.
Faults act there: a ``Split`` caps what one read takes, a ``Delay`` stamps later
arrival times, ``StopReading`` bounds the pipe to the client and stalls its
reader, ``Reset`` and ``HalfClose`` are moments at which the link changes state.

No background task drives the link. Every operation first applies what is due
at the current time, and every wait is bounded by the next moment something is
due, so the link works under ``autojump_clock`` and in any nursery, and a run
depends only on virtual time, not on which task trio happens to run first.
"""

from __future__ import annotations

import functools
import math
import operator
import random
from collections import deque
from collections.abc import Callable, Sequence

import trio
import trio.lowlevel

from ._faults import Delay, Fault, HalfClose, RandomSplit, Reset, Split, StopReading, wire_random

__all__ = ["LinkEnd", "open_link"]


def _succeed(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.SUCCEEDED


async def wait_until(
    deadline: float,
    abort: Callable[[object], trio.lowlevel.Abort] = _succeed,
    on_scope: Callable[[trio.CancelScope | None], None] | None = None,
) -> None:
    """Block (as ``wait_task_rescheduled(abort)``) until rescheduled or ``deadline``.

    At the deadline the task simply wakes up: its own scope's expiry is turned into
    a plain ``reschedule``, not a ``Cancelled`` raised through every frame (a swarm
    does this tens of thousands of times). A cancellation from outside still
    raises as usual, through ``abort``. ``on_scope`` is given the scope while the
    task waits (and None after), so that another task can bring the deadline nearer.
    """
    task = trio.lowlevel.current_task()
    with trio.CancelScope(deadline=deadline) as scope:

        def on_cancel(raise_cancel: object) -> trio.lowlevel.Abort:
            result = abort(raise_cancel)
            if result is trio.lowlevel.Abort.SUCCEEDED and scope.cancel_called:
                trio.lowlevel.reschedule(task)  # our own deadline: just wake up
                return trio.lowlevel.Abort.FAILED
            return result

        if on_scope is None:
            await trio.lowlevel.wait_task_rescheduled(on_cancel)
            return
        on_scope(scope)
        try:
            await trio.lowlevel.wait_task_rescheduled(on_cancel)
        finally:
            on_scope(None)


class _Pipe:
    """One direction of a link: ordered chunks, each with the virtual time it arrives.

    A pipe without timed faults (no delay, no stalled reader, no reset or
    half-close planned) never reads the clock: every chunk arrives at 0.0.
    """

    def __init__(
        self,
        link: _Link,
        *,
        split: Split | RandomSplit | None,
        delay: Delay | None,
        window: float,
        stall_at: float,
        rng: Callable[[], random.Random],
    ) -> None:
        self._link = link
        self._now = trio.lowlevel.current_clock().current_time  # trio.current_time, less a call
        self._chunks: deque[tuple[float, bytes]] = deque()
        self._buffered = 0
        self._last_arrival = -math.inf
        self._split = split
        self._split_index = 0
        self._delay = delay
        self._window = window
        self._stall_at = stall_at
        self._make_rng = rng  # made on first use: seeding costs more than a link
        self._rng: random.Random | None = None
        self.eof = False  # the sender is done: send_eof or aclose
        self._eof_at = -math.inf  # ... and the reader sees it from then on (after the delay)
        self.broken = False  # reset: both ends fail
        self.reader_gone = False  # the receiving end closed
        self._reader: trio.lowlevel.Task | None = None  # waiting in receive_some
        self._reader_scope: trio.CancelScope | None = None  # ... until this scope's deadline
        self._senders: list[trio.lowlevel.Task] = []  # waiting for room in the window
        self._timed = delay is not None or stall_at < math.inf or link.next_due < math.inf
        self._sending = False
        self._receiving = False

    # -- waking ---------------------------------------------------------------------------------

    def changed(self) -> None:
        """The pipe's state changed (EOF, reset, closed, emptied): wake every waiter."""
        self._wake_reader()
        self._wake_senders()

    def _wake_reader(self) -> None:
        task = self._reader
        if task is not None:
            self._reader = None
            trio.lowlevel.reschedule(task)

    def _wake_senders(self) -> None:
        if self._senders:
            senders, self._senders = self._senders, []
            for task in senders:
                trio.lowlevel.reschedule(task)

    def _arrived(self, arrival: float, now: float) -> None:
        """New bytes: wake a waiting reader, or, if they arrive later, end its wait then.

        Moving the waiting reader's deadline instead of waking it to find nothing
        ready saves a delayed connection two scheduler passes per packet.
        """
        if self._reader is None:
            return
        scope = self._reader_scope
        if arrival <= now or scope is None:
            self._wake_reader()
        elif arrival < scope.deadline:
            scope.deadline = arrival

    def _set_reader_scope(self, scope: trio.CancelScope | None) -> None:
        self._reader_scope = scope

    async def _wait_readable(self, until: float) -> None:
        """Wait (in receive_some) until bytes, a state change, or the virtual time ``until``."""
        task = trio.lowlevel.current_task()
        self._reader = task

        def abort(_: object) -> trio.lowlevel.Abort:
            if self._reader is task:
                self._reader = None
            return trio.lowlevel.Abort.SUCCEEDED

        if self._timed:
            await wait_until(until, abort, self._set_reader_scope)
        else:
            await trio.lowlevel.wait_task_rescheduled(abort)

    async def _wait_for_room(self) -> None:
        """Wait until the reader takes bytes, a state change, or the link's next fault."""
        task = trio.lowlevel.current_task()
        self._senders.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            if task in self._senders:
                self._senders.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        until = self._link.next_due
        if until == math.inf:
            await trio.lowlevel.wait_task_rescheduled(abort)
        else:
            await wait_until(until, abort)

    # -- state ----------------------------------------------------------------------------------

    def finish(self) -> None:
        """The sender is done: the EOF arrives behind the bytes in flight, one delay later."""
        if self.eof:
            return
        self.eof = True
        if self._delay is not None:
            arrival = self._now() + self._delay.seconds
            self._eof_at = max(arrival, self._last_arrival)
        self.changed()

    def discard(self) -> None:
        self._chunks.clear()
        self._buffered = 0
        self.changed()

    def _piece(self) -> float:
        split = self._split
        if split is None:
            return math.inf
        if isinstance(split, RandomSplit):
            return self._random().randint(split.low, split.high)
        size = split.sizes[self._split_index % len(split.sizes)]
        self._split_index += 1
        return size

    def _random(self) -> random.Random:
        if self._rng is None:
            self._rng = self._make_rng()
        return self._rng

    def _time(self) -> float:
        """The current virtual time, with the link's due faults applied (0.0 if untimed)."""
        if not self._timed:
            return 0.0
        now = self._now()
        link = self._link
        if now >= link.next_due:
            link.apply_due(now)
        return now

    # -- sending --------------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview, *, more: bool = False) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            # Deliver first, then yield: the reader runs in the same scheduler batch
            # as this task resumes, which halves the batches a round trip takes.
            await trio.lowlevel.checkpoint_if_cancelled()
            data = bytes(data)
            now = self._time()
            self._check_send()
            if data:
                arrival = self._arrival(now)
                while data:
                    room = self._window - self._buffered
                    if room >= 1:
                        piece = data if room >= len(data) else data[: int(room)]
                        data = data[len(piece) :]
                        self._put(piece, arrival, now)
                        continue
                    await self._wait_for_room()  # a full window: wait for the reader
                    now = self._time()
                    self._check_send()
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Take what the window has room for now, without waiting; how many bytes it took.

        The bytes get the same arrival time (delay, jitter) as ``send_all`` would
        give them; a reset, an EOF sent, or a closed reader raise as there.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        now = self._time()
        self._check_send()
        size = len(data)
        room = self._window - self._buffered
        if not size or room < 1:
            return 0
        piece = bytes(data) if room >= size else bytes(data[: int(room)])
        self._put(piece, self._arrival(now), now)
        return len(piece)

    def _put(self, piece: bytes, arrival: float, now: float) -> None:
        self._chunks.append((arrival, piece))
        self._buffered += len(piece)
        self._arrived(arrival, now)

    def _arrival(self, now: float) -> float:
        """When bytes written now arrive: after the delay, not before earlier ones."""
        delay = self._delay
        if delay is None:
            return now  # 0.0 on an untimed pipe; never before earlier bytes either way
        arrival = now + delay.seconds
        if delay.jitter:
            arrival += self._random().uniform(0.0, delay.jitter)
        arrival = max(arrival, self._last_arrival)  # bytes never overtake each other
        self._last_arrival = arrival
        return arrival

    def _check_send(self) -> None:
        if self.broken:
            raise trio.BrokenResourceError("connection reset")
        if self.eof:
            raise trio.ClosedResourceError("this end was closed for sending")
        if self.reader_gone:
            raise trio.BrokenResourceError("the peer closed the connection")

    # -- receiving ------------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError(f"max_bytes must be >= 1, got {max_bytes!r}")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while True:
                now = self._time()
                data = self._ready(max_bytes, now)
                if data is not None:
                    if not waited:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return data
                await self._wait_readable(self._next_change(now))
                waited = True
        finally:
            self._receiving = False

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        """What a read would return now (b"" at EOF), or None if it would wait."""
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        return self._ready(max_bytes, self._time())

    async def wait_readable(self) -> None:
        """Wait until ``receive_nowait`` has bytes, EOF or an error to give."""
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            now = self._time()
            if self._readable(now):
                await trio.lowlevel.checkpoint()
                return
            while True:
                await self._wait_readable(self._next_change(now))
                now = self._time()
                if self._readable(now):
                    return
        finally:
            self._receiving = False

    def _readable(self, now: float) -> bool:
        """True when ``_ready`` would not return None at ``now`` (it may raise)."""
        if self.reader_gone or self.broken:
            return True
        chunks = self._chunks
        if not self._timed:
            return bool(chunks) or self.eof
        stalled = now >= self._stall_at
        at_eof = self.eof and now >= self._eof_at
        if stalled:
            return at_eof
        return (bool(chunks) and chunks[0][0] <= now) or (not chunks and at_eof)

    def _ready(self, max_bytes: int | None, now: float) -> bytes | None:
        """What a read returns at ``now`` (b"" at EOF), or None if it must wait."""
        if self.reader_gone:
            raise trio.ClosedResourceError("this end was closed")
        if self.broken:
            raise trio.BrokenResourceError("connection reset")
        chunks = self._chunks
        if not self._timed:
            if chunks:
                return self._take(max_bytes, now)
            return b"" if self.eof else None
        ready = bool(chunks) and chunks[0][0] <= now
        stalled = now >= self._stall_at
        at_eof = self.eof and now >= self._eof_at
        if stalled and at_eof:
            self.discard()  # the stalled reader sees the close, never the data
            return b""
        if ready and not stalled:
            return self._take(max_bytes, now)
        if not chunks and at_eof:
            return b""
        return None

    def _next_change(self, now: float) -> float:
        """The virtual time at which a waiting read must look again (inf: only when woken)."""
        if not self._timed:
            return math.inf
        until = self._link.next_due
        stalled = now >= self._stall_at
        if self._chunks and not stalled:
            until = min(until, self._chunks[0][0])
        if not stalled:
            until = min(until, self._stall_at)
        if self.eof and self._eof_at > now:
            until = min(until, self._eof_at)
        return until

    def _take(self, max_bytes: int | None, now: float) -> bytes:
        """Take the bytes due, at most ``max_bytes`` and one piece of a split."""
        limit = self._piece() if self._split is not None else math.inf
        if max_bytes is not None and max_bytes < limit:
            limit = max_bytes
        chunks = self._chunks
        arrival, data = chunks[0]
        taken = len(data)
        if taken > limit:
            taken = int(limit)
            chunks[0] = (arrival, data[taken:])
            data = data[:taken]
        else:
            chunks.popleft()
            if chunks and taken < limit and chunks[0][0] <= now:
                out = [data]
                while chunks and chunks[0][0] <= now and taken < limit:
                    arrival, chunk = chunks[0]
                    room = int(min(limit - taken, len(chunk)))
                    if room < len(chunk):
                        chunks[0] = (arrival, chunk[room:])
                        chunk = chunk[:room]
                    else:
                        chunks.popleft()
                    out.append(chunk)
                    taken += room
                data = b"".join(out)
        self._buffered -= taken
        self._wake_senders()  # room in the window for a blocked sender
        return data

    async def wait_send_all_might_not_block(self) -> None:
        self._time()
        if self.eof:
            raise trio.ClosedResourceError("this end was closed for sending")
        while self._buffered >= self._window and not (self.broken or self.reader_gone or self.eof):
            await self._wait_for_room()
            self._time()  # applies the faults that fell due meanwhile
        await trio.lowlevel.checkpoint()


class _Link:
    """Both directions of one connection and the moments its faults fall due."""

    def __init__(self, faults: Sequence[Fault], seed: int, key: int, now: float) -> None:
        def pick(kind: type[Split] | type[RandomSplit] | type[Delay], direction: str) -> object:
            for fault in faults:
                if isinstance(fault, kind) and fault.direction in ("both", direction):
                    return fault
            return None

        def split_for(direction: str) -> Split | RandomSplit | None:
            found = pick(Split, direction) or pick(RandomSplit, direction)
            assert found is None or isinstance(found, Split | RandomSplit)
            return found

        def delay_for(direction: str) -> Delay | None:
            found = pick(Delay, direction)
            assert found is None or isinstance(found, Delay)
            return found

        stall_at = window = math.inf
        self.reset_at = self.half_close_at = math.inf
        self.half_closed = False
        for fault in faults:
            if isinstance(fault, StopReading):
                stall_at = min(stall_at, now + fault.at)
                window = min(window, fault.window)
            elif isinstance(fault, Reset):
                self.reset_at = min(self.reset_at, now + fault.at)
            elif isinstance(fault, HalfClose):
                self.half_close_at = min(self.half_close_at, now + fault.at)
        self.next_due = min(self.reset_at, self.half_close_at)
        self.to_server = _Pipe(
            self,
            split=split_for("to_server"),
            delay=delay_for("to_server"),
            window=math.inf,
            stall_at=math.inf,
            rng=functools.partial(wire_random, seed, key, "to_server"),
        )
        self.to_client = _Pipe(
            self,
            split=split_for("to_client"),
            delay=delay_for("to_client"),
            window=window,
            stall_at=stall_at,
            rng=functools.partial(wire_random, seed, key, "to_client"),
        )

    def apply_due(self, now: float) -> None:
        """Apply the faults due at ``now`` (the pipes call this once ``now >= next_due``)."""
        if now >= self.half_close_at:
            self.half_close_at = math.inf
            self.half_closed = True
            self.to_server.finish()
        if now >= self.reset_at:
            self.reset_at = self.half_close_at = math.inf
            self.reset()
        self.next_due = min(self.reset_at, self.half_close_at)

    def reset(self) -> None:
        for pipe in (self.to_server, self.to_client):
            pipe.broken = True
            pipe.discard()


class LinkEnd(trio.abc.HalfCloseableStream):
    """One end of a simulated connection; ``peer`` names the client, as a socket's address would.

    It is a trio stream and also a transport of the worker's own seam
    (``trioserver.transport.Transport``: ``receive_nowait``, ``wait_readable``,
    ``send_nowait``...), so a worker reads and writes it exactly as it does a socket.
    """

    #: Closing a link with unread bytes destroys nothing (no TCP reset to avoid).
    lingers = False
    socket = None

    def __init__(self, link: _Link, outgoing: _Pipe, incoming: _Pipe, peer: str) -> None:
        self._link = link
        self._out = outgoing
        self._in = incoming
        self.peer = peer
        # The hot paths go straight to the pipes, one coroutine frame less per call
        # (a swarm makes hundreds of thousands); the methods below say the same.
        self.send_all = outgoing.send_all  # type: ignore[method-assign]
        self.send_nowait = outgoing.send_nowait  # type: ignore[method-assign]
        self.receive_some = incoming.receive_some  # type: ignore[method-assign]
        self.receive_nowait = incoming.receive_nowait  # type: ignore[method-assign]
        self.wait_readable = incoming.wait_readable  # type: ignore[method-assign]

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        """What a receive would return now (b"" at EOF), or None when it would wait."""
        return self._in.receive_nowait(max_bytes)

    async def wait_readable(self) -> None:
        """Wait until :meth:`receive_nowait` has bytes, EOF or an error to give."""
        await self._in.wait_readable()

    async def wait_writable(self) -> None:
        await self._out.wait_send_all_might_not_block()

    async def send_all(self, data: bytes | bytearray | memoryview, *, more: bool = False) -> None:
        await self._out.send_all(data)

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Send what fits now without waiting; the bytes taken.

        0 when a ``StopReading`` window is full; raises ``BrokenResourceError``
        after a reset and ``ClosedResourceError`` after ``send_eof``.
        """
        return self._out.send_nowait(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._out.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._out.broken:
            raise trio.BrokenResourceError("connection reset")
        self._out.finish()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._in.receive_some(max_bytes)

    @property
    def was_reset(self) -> bool:
        """True once the connection was reset (by a ``Reset`` fault or ``reset()``)."""
        return self._out.broken

    @property
    def half_closed(self) -> bool:
        """True once a ``HalfClose`` fault closed the client's sending side."""
        return self._link.half_closed

    def reset(self) -> None:
        """Reset the connection now (both ends' next operations raise ``BrokenResourceError``)."""
        self._link.reset()

    def closing(self, reason: object) -> None:
        """A byte stream cannot say why it closes (the seam's ``closing``)."""

    def close(self) -> None:
        """``aclose()`` without its checkpoint, for closing many ends at once."""
        self._out.finish()
        self._in.reader_gone = True
        self._in.discard()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


def open_link(
    faults: Sequence[Fault] = (), *, seed: int = 0, key: int = 0, peer: str = "memory"
) -> tuple[LinkEnd, LinkEnd]:
    """A (client end, server end) pair with ``faults`` on the wire between them."""
    link = _Link(faults, seed, key, trio.current_time())
    client = LinkEnd(link, link.to_server, link.to_client, peer)
    server = LinkEnd(link, link.to_client, link.to_server, peer)
    return client, server
