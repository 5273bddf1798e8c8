"""A transport in memory, and the record connections share, for tests without a worker.

``FakeTransport`` implements the transport seam (``trioserver.transport``) over
two byte buffers: the test feeds what the peer sends with ``feed`` and reads
what the server sent in ``sends``, one item per send call, so a test can count
sends as well as read bytes. ``room`` is how many more bytes the peer's
receive window takes (infinite unless a test fills it); ``make_room`` opens it.

``serving`` builds the pieces a worker would (pool, counters, message queue,
timers, ``Shared``), runs their tasks in a nursery and hands back a ``Harness``
that opens ``Connection`` objects on fake transports.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio.lowlevel

from trioserver.config import ConnectionSettings
from trioserver.connection import Connection, Shared
from trioserver.dispatch import MessageQueue
from trioserver.framer import Packet, encode
from trioserver.handlers import Services
from trioserver.handlers.router import Router
from trioserver.nursery_pool import ConnectionPool
from trioserver.outbox import DeferredFlusher
from trioserver.peer import Peer
from trioserver.stats import Counters
from trioserver.timers import ConnectionRules, RecycleTimer


@attrs.define(eq=False)
class FakeTransport:
    """The transport seam over in-memory buffers (see the module docstring)."""

    lingers: bool = False
    socket: None = None
    incoming: bytearray = attrs.Factory(bytearray)
    eof: bool = False
    reset: bool = False
    closed: bool = False
    sends: list[bytes] = attrs.Factory(list)
    room: float = math.inf
    eof_sent: bool = False
    #: What the connection said before closing (``closing``), in order.
    reasons: list[object] = attrs.Factory(list)
    _lot: trio.lowlevel.ParkingLot = attrs.Factory(trio.lowlevel.ParkingLot)

    # -- the test's side ---------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """The peer sends ``data``."""
        self.incoming += data
        self._lot.unpark_all()

    def feed_eof(self) -> None:
        self.eof = True
        self._lot.unpark_all()

    def make_room(self, size: float = math.inf) -> None:
        """The peer reads: ``size`` more bytes fit in its window."""
        self.room = size
        self._lot.unpark_all()

    @property
    def sent(self) -> bytes:
        return b"".join(self.sends)

    # -- the seam ----------------------------------------------------------------------------

    def _check(self) -> None:
        if self.closed:
            raise trio.ClosedResourceError("closed")
        if self.reset:
            raise trio.BrokenResourceError("reset")

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        self._check()
        if self.incoming:
            data = bytes(self.incoming[:max_bytes])
            del self.incoming[:max_bytes]
            return data
        return b"" if self.eof else None

    async def wait_readable(self) -> None:
        while not (self.incoming or self.eof or self.closed or self.reset):
            await self._lot.park()
        await trio.lowlevel.checkpoint()

    def send_nowait(self, data: bytes | memoryview) -> int:
        self._check()
        taken = int(min(len(data), self.room))
        if taken:
            self.room -= taken
            self.sends.append(bytes(data[:taken]))
        return taken

    async def wait_writable(self) -> None:
        while self.room < 1 and not (self.closed or self.reset):
            await self._lot.park()
        await trio.lowlevel.checkpoint()

    async def send_all(self, data: bytes | memoryview, *, more: bool = False) -> None:
        view = memoryview(data)
        while view:
            view = view[self.send_nowait(view) :]
            if view:
                await self.wait_writable()
                self._check()
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        self._check()
        self.eof_sent = True
        await trio.lowlevel.checkpoint()

    def closing(self, reason: object) -> None:
        self.reasons.append(reason)

    async def aclose(self) -> None:
        self.closed = True
        self._lot.unpark_all()
        await trio.lowlevel.checkpoint()


@attrs.define(eq=False)
class Harness:
    """What a worker would own, without the worker (see the module docstring)."""

    router: Router
    pool: ConnectionPool
    counters: Counters
    queue: MessageQueue
    shared: Shared
    nursery: trio.Nursery
    _ports: int = 0

    def connection(self, transport: FakeTransport | None = None) -> Connection:
        """A connection holding a slot of the pool (not yet served)."""
        slot = self.pool.acquire()
        assert slot is not None, "the harness's pool is full"
        self._ports += 1
        conn = Connection(
            slot, transport or FakeTransport(), Peer("fake", self._ports), self.shared
        )
        self.shared.connections[slot.index] = conn
        return conn

    def serve(self, transport: FakeTransport | None = None) -> tuple[Connection, FakeTransport]:
        """A connection with its reader running (``Connection.serve``)."""
        transport = transport or FakeTransport()
        conn = self.connection(transport)
        self.nursery.start_soon(conn.serve)
        return conn, transport


@asynccontextmanager
async def serving(
    router: Router,
    *,
    handler_tasks: int = 1,
    queue_size: int = 16,
    capacity: int = 8,
    recycle_delay: float = 0.0,
    settings: ConnectionSettings | None = None,
    **shared: Any,
) -> AsyncIterator[Harness]:
    """Run a pool, a queue with ``handler_tasks`` tasks and the timers; yield a Harness."""
    settings = settings or ConnectionSettings(flood_check=False)
    pool = ConnectionPool(capacity)
    counters = Counters()
    recycler = RecycleTimer(pool, recycle_delay)
    queue = MessageQueue(router, Services(), counters, size=queue_size, handler_tasks=handler_tasks)
    flusher = DeferredFlusher()
    record = Shared(
        rules=ConnectionRules.from_settings(settings),
        counters=counters,
        queue=queue,
        recycler=recycler,
        routes=router.routes,
        flusher=flusher,
        **shared,
    )
    async with trio.open_nursery() as nursery:
        record.nursery = nursery
        nursery.start_soon(recycler.run)
        nursery.start_soon(flusher.run)
        await nursery.start(queue.run)
        yield Harness(router, pool, counters, queue, record, nursery)
        nursery.cancel_scope.cancel()


def packets(code: int, *bodies: bytes) -> list[Packet]:
    return [Packet(code, body) for body in bodies]


def wire(code: int, *bodies: bytes) -> bytes:
    return b"".join(encode(code, body) for body in bodies)
