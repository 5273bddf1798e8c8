"""A connection's outbox: replies and pushes on their way out, bounded, in order.

What a handler (or any task) sends is queued here and leaves in as few sends as
possible: a run of plain handlers' replies goes out together when the run ends
(``batching``); replies made by an async handler or another task go out when
that task next waits (``defer``: the :class:`DeferredFlusher` sends them on the
scheduler's next pass, one send for all of them). A send is first tried without
waiting; only what does not fit starts a writer task, which exists only while a
send has to wait, so an idle connection costs no task for writing.

The caps: a peer that lets more than ``max_pending_replies`` replies or
``max_pending_bytes`` bytes wait unread is kicked (the original treated more
than 400 waiting replies as malicious); the reply that crossed the line is not
queued. Memory per connection is therefore bounded however slowly it reads.

A reload's handoff stops the outbox without losing a byte: the connection's
``interrupt`` wakes a waiting writer, which puts back exactly what did not go
out (:class:`~trioserver.transport.SendInterrupted`) and ends; ``hold`` then
makes the outbox queue without sending, and ``queued`` is what moves to the new
worker. If the handoff does not happen, ``release`` sends it here after all.
"""

from __future__ import annotations

from typing import Final, Protocol

import trio

from .lifecycle import State
from .reasons import KickReason
from .transport import SendInterrupted, Transport
from .wakeup import Wakeup

__all__ = ["DeferredFlusher", "Limits", "Outbox", "Owner"]

# Module constants: reading an Enum member through its class costs ~200 ns on 3.11,
# and hashing one (a set lookup) runs Python code.
_CLOSING: Final = State.CLOSING
_CLOSED: Final = State.CLOSED
_HANDING_OFF: Final = State.HANDING_OFF


class Limits(Protocol):
    """What an outbox needs of its worker: the caps, and where writers and flushes run."""

    @property
    def max_pending_replies(self) -> int: ...
    @property
    def max_pending_bytes(self) -> int: ...
    @property
    def nursery(self) -> trio.Nursery: ...
    @property
    def flusher(self) -> DeferredFlusher: ...


class Owner(Protocol):
    """What an outbox needs of its connection (``connection.Connection`` is one)."""

    @property
    def state(self) -> State: ...
    @property
    def stale(self) -> bool: ...
    @property
    def transport(self) -> Transport: ...
    @property
    def shared(self) -> Limits: ...
    def kick(self, reason: KickReason) -> None: ...
    def peer_gone(self) -> None: ...
    def settle(self) -> None: ...


class Outbox:
    """The bytes waiting to leave one connection, and the caps on them."""

    __slots__ = (
        "_conn",
        "_items",
        "_writer_scope",
        "batching",
        "deferred",
        "pending_bytes",
        "pending_replies",
        "writing",
    )

    def __init__(self, conn: Owner) -> None:
        self._conn = conn
        #: The queued replies (None when empty: an idle connection keeps no list).
        self._items: list[bytes] | None = None
        #: Replies and bytes queued or handed to a writer but not yet sent.
        self.pending_replies = 0
        self.pending_bytes = 0
        #: True while a writer task sends what a non-blocking send could not take.
        self.writing = False
        self._writer_scope: trio.CancelScope | None = None
        #: True while plain handlers run: their replies are sent together afterwards.
        self.batching = False
        #: True while this outbox waits in the flusher's list.
        self.deferred = False

    def __bool__(self) -> bool:
        """True while something is queued or being written."""
        return bool(self._items) or self.writing

    def send(self, data: bytes) -> bool:
        """Queue already-encoded bytes as one reply; False if the connection is gone or kicked.

        Crossing a cap kicks the connection (``SEND_QUEUE`` / ``SEND_BYTES``).
        """
        conn = self._conn
        state = conn.state
        if state is _CLOSING or state is _CLOSED:
            return False
        shared = conn.shared
        replies = self.pending_replies + 1
        size = self.pending_bytes + len(data)
        if replies > shared.max_pending_replies:
            conn.kick(KickReason.SEND_QUEUE)
            return False
        if size > shared.max_pending_bytes:
            conn.kick(KickReason.SEND_BYTES)
            return False
        self.pending_replies = replies
        self.pending_bytes = size
        items = self._items
        if items is None:
            self._items = [data]
        else:
            items.append(data)
        if not self.batching:
            self.flush()
        return True

    def flush(self) -> None:
        """Send what is queued now: straight to the transport if it takes it all, else
        the rest through a writer task (started here) that waits for room."""
        items = self._items
        if not items or self.writing:
            return
        conn = self._conn
        if conn.stale:
            return
        data = items[0] if len(items) == 1 else b"".join(items)
        self._items = None
        try:
            sent = conn.transport.send_nowait(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.peer_gone()
            return
        if sent == len(data):
            self.pending_replies = 0
            self.pending_bytes = 0
            return
        self._items = [data[sent:]]
        self.pending_bytes -= sent
        self.writing = True
        conn.shared.nursery.start_soon(self._write)

    def defer(self) -> None:
        """Send what is queued once the current task waits (see the module docstring)."""
        if not self.deferred and self._items:
            self.deferred = True
            self._conn.shared.flusher.add(self)

    def hold(self) -> None:
        """Queue only, send nothing, until :meth:`release` (a handoff takes what is
        queued); called once no writer task runs."""
        if self.writing:
            raise RuntimeError("hold() while a writer task runs")
        self.writing = True  # what keeps flush() from sending, as a writer's presence does

    def release(self) -> None:
        """Send again after :meth:`hold` (the handoff did not happen): from now on."""
        self.writing = False
        self.flush()

    def queued(self) -> bytes:
        """Everything queued and not yet sent, in order."""
        items = self._items
        return b"".join(items) if items else b""

    def close(self) -> None:
        """The connection closed: drop what is queued and stop the writer."""
        self._items = None
        if self._writer_scope is not None:
            self._writer_scope.cancel()

    def _moving(self) -> bool:
        return self._conn.state is _HANDING_OFF

    async def _write(self) -> None:
        """Send what is queued, waiting for the peer to make room, until nothing is left."""
        conn = self._conn
        transport = conn.transport
        try:
            with trio.CancelScope() as self._writer_scope:
                if conn.stale:  # closed before this task first ran
                    return
                while items := self._items:
                    if self._moving():  # being handed over: what is queued moves with it
                        return
                    count = len(items)
                    data = items[0] if count == 1 else b"".join(items)
                    self._items = None
                    try:
                        await transport.send_all(data)
                    except SendInterrupted as exc:
                        if self._moving():  # what did not go out moves with the connection
                            self._items = [exc.unsent, *(self._items or ())]
                            self.pending_bytes -= len(data) - len(exc.unsent)
                        else:
                            conn.peer_gone()
                        return
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        conn.peer_gone()
                        return
                    self.pending_replies -= count
                    self.pending_bytes -= len(data)
                self.pending_replies = 0
                self.pending_bytes = 0
        finally:
            self._writer_scope = None
            self.writing = False
            conn.settle()


class DeferredFlusher:
    """Flushes the outboxes that ``Outbox.defer`` listed, one scheduler pass later."""

    def __init__(self) -> None:
        self._outboxes: list[Outbox] = []
        self._wakeup = Wakeup()

    def add(self, outbox: Outbox) -> None:
        self._outboxes.append(outbox)
        self._wakeup.wake()

    async def run(self) -> None:
        """Flush what was listed whenever woken; runs until cancelled."""
        while True:
            await self._wakeup.wait()
            batch, self._outboxes = self._outboxes, []
            for outbox in batch:
                outbox.deferred = False
                outbox.flush()
