"""The message queue, its handler tasks, and the stale check.

Order on a connection, with N handler tasks: the shared queue does
not carry packets, it carries *connections that have work*. A connection's
packets wait in its own inbox; a connection is in the queue at most once
(``Connection.scheduled``), so exactly one handler task drains a given inbox at
a time, in arrival order, and replies enter the outbox in request order.

Batching: a reader appends everything one receive decoded and schedules the
connection once; a handler drains the whole inbox in one visit; the queue is
tried with ``*_nowait`` first and awaited only when full or empty. A full queue
makes readers wait, which stops them reading: TCP backpressure, nothing dropped.

Stale check: a connection carries the sequence its slot had when it opened;
once it closes the slot's sequence moves on, and whatever remained in its
inbox is dropped and counted as stale.

Batches: a route with a ``batch`` handler (the account requests) takes a
connection's run of consecutive requests of its code, whether the reader or a
handler task meets it, into the handler's pending batch; the connection is then
*held* (``scheduled``, so its later packets wait in its inbox and nobody else
drains it) until the batch is answered. One task starts a batch for each batch
handler with requests pending, with every run gathered since the last one (from
every connection, across the readers of one scheduler pass, and while earlier
batches were in hand), each batch in a task of its own. A connection's replies are
held while its batch runs and leave in one send when it ends; then the rest of
its inbox is handled as the reader would. A connection brings one run of one code
to a batch, so the requests of one connection stay in order, and a ping after a
login is answered after the login's reply.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Final

import trio

from .connection import Connection
from .framer import Packet
from .handlers.context import BatchHandler, BatchRun, Context, LoginHook, Services
from .handlers.router import Route, Router
from .hub import Hub
from .lifecycle import State
from .reasons import DropReason, KickReason
from .stats import Counters
from .wakeup import Wakeup

__all__ = ["MessageQueue", "Route", "Router"]

log = logging.getLogger("trioserver.dispatch")

# Module constants: reading an Enum member through its class costs ~200 ns on 3.11.
_CLOSING: Final = State.CLOSING

#: A handler task yields to the scheduler at least this often while the queue stays full.
_YIELD_EVERY: Final = 64


class MessageQueue:
    """The bounded queue of connections with work, and the N handler tasks draining it.

    ``submit`` is the reader's entry: plain (non-async) handlers run right there,
    in the reader, while the connection has nothing queued, since a handler that
    cannot wait gains nothing from a hop through the queue but two task switches.
    The first packet whose handler is async, and everything after it, goes to the
    inbox and the queue, which keeps the order.
    """

    def __init__(
        self,
        router: Router,
        services: Services,
        counters: Counters,
        *,
        size: int,
        handler_tasks: int,
        hub: Hub | None = None,
    ) -> None:
        if handler_tasks < 1:
            raise ValueError(f"handler_tasks must be at least 1, got {handler_tasks!r}")
        self.router = router
        self.services = services
        self.hub = hub
        #: The router's on_login handlers (set by the worker once it has made them).
        self.login: LoginHook | None = None
        self._counters = counters
        self._size = size
        self._handler_tasks = handler_tasks
        self._send, self._receive = trio.open_memory_channel[Connection](size)
        self.busy = 0
        #: Runs waiting for their batch handler's next batch.
        self._pending: dict[BatchHandler, list[BatchRun]] = {}
        self._pending_wakeup = Wakeup()
        self._nursery: trio.Nursery | None = None
        self._closed = False

    @property
    def depth(self) -> int:
        return self._send.statistics().current_buffer_used

    @property
    def capacity(self) -> int:
        return self._size

    def context(self, conn: Connection) -> Context:
        """A handler context for ``conn`` (made per batch: idle connections keep none)."""
        return Context(conn, self.services, self.hub, self.login)

    def submit(self, conn: Connection, packets: list[Packet]) -> bool:
        """Hand over one batch of checked packets; True if ``conn`` must now be scheduled."""
        inbox = conn.inbox
        if conn.scheduled or inbox:
            inbox.extend(packets)
            return not conn.scheduled
        routes = self.router._routes
        ctx = self.context(conn)
        counters = self._counters
        counters.until_timed -= 1  # handler latency is sampled per batch (stats.py)
        timed = counters.until_timed <= 0
        if timed:
            counters.timed_batch()
        outbox = conn.outbox
        outbox.batching = True
        try:
            for i, packet in enumerate(packets):
                route = routes.get(packet.code)
                if route is None:  # removed since the reader checked it
                    self._counters.drop(conn, DropReason.UNKNOWN_CODE, packet.code)
                    continue
                if route.batch is not None and (taken := self._join_batch(ctx, route, packets, i)):
                    inbox.extend(packets[i + taken :])  # they wait for the batch's answers
                    conn.scheduled = True  # held by the batch
                    return False
                if route.is_async:
                    inbox.extend(packets[i:])
                    return True
                try:
                    if timed:
                        start = perf_counter()
                        route.handler(ctx, packet)
                        counters.observe_handler(packet.code, perf_counter() - start)
                    else:
                        route.handler(ctx, packet)
                except Exception:
                    self._handler_failed(conn, route, packet)
                if conn.state is _CLOSING:  # kicked (the reader runs this: not yet CLOSED)
                    self._drop_stale(conn, packets[i + 1 :])  # counted, as a handler task does
                    return False
            return False
        finally:
            outbox.batching = False
            outbox.flush()

    async def schedule(self, conn: Connection) -> None:
        """Put ``conn`` in the queue unless it is already there (waits when full)."""
        if conn.scheduled:
            return
        conn.scheduled = True
        try:
            self._send.send_nowait(conn)
        except trio.WouldBlock:
            try:
                await self._send.send(conn)
            except BaseException:
                conn.scheduled = False
                raise

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the handler tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            for _ in range(self._handler_tasks):
                nursery.start_soon(self._handler_task)
            self._nursery = nursery
            nursery.start_soon(self._start_batches, nursery)
            task_status.started()

    def close(self) -> None:
        """No more connections will be scheduled: handler tasks end once the queue is empty
        (and the batch starter once it started what is pending)."""
        self._send.close()
        self._closed = True
        self._pending_wakeup.wake()

    async def _handler_task(self) -> None:
        receive_nowait = self._receive.receive_nowait
        receive = self._receive.receive
        streak = 0
        while True:
            try:
                conn = receive_nowait()
                streak += 1
                if streak >= _YIELD_EVERY:
                    streak = 0
                    await trio.lowlevel.checkpoint()
            except trio.WouldBlock:
                streak = 0
                try:
                    conn = await receive()
                except trio.EndOfChannel:
                    return
            except trio.EndOfChannel:
                return
            self.busy += 1
            try:
                await self._drain(conn)
            finally:
                self.busy -= 1

    async def _drain(self, conn: Connection) -> None:
        """Handle the packets in ``conn``'s inbox, in order; then unschedule it.

        One visit takes the inbox as it is when the visit starts. What the reader
        adds meanwhile waits for the connection's next turn: the connection goes
        to the back of the queue, so a client that keeps its inbox full cannot
        hold a handler task while the other connections wait (measured: with 8
        handler tasks and 100 pipelining clients, some waited 10 s otherwise).
        Only when the queue is full does the visit go on with the new packets.

        Replies of plain handlers leave together when the run of them ends; an
        async handler's replies leave once it waits (see ``Context.flush``).
        """
        requeued = held = False
        try:
            if conn.stale:
                self._drop_stale(conn, conn.inbox)
                return
            routes = self.router._routes
            ctx = self.context(conn)
            counters = self._counters
            outbox = conn.outbox
            while conn.inbox:
                batch = conn.inbox
                conn.inbox = []  # the reader fills a fresh list meanwhile
                counters.until_timed -= 1  # plain handlers: sampled per batch (stats.py)
                timed = counters.until_timed <= 0
                if timed:
                    counters.timed_batch()
                for i, packet in enumerate(batch):
                    route = routes.get(packet.code)
                    if route is None:  # removed since the reader checked it
                        self._counters.drop(conn, DropReason.UNKNOWN_CODE, packet.code)
                        continue
                    if route.batch is not None and (
                        taken := self._join_batch(ctx, route, batch, i)
                    ):
                        conn.inbox = batch[i + taken :] + conn.inbox
                        held = True  # the batch answers it, then handles the rest
                        return
                    try:
                        if route.is_async:
                            outbox.defer()  # earlier replies leave once we wait
                            start = perf_counter()
                            await route.handler(ctx, packet)  # type: ignore[misc]
                            if counters.timing_every:  # always timed when metrics are on
                                counters.observe_handler(packet.code, perf_counter() - start)
                        else:
                            outbox.batching = True
                            try:
                                if timed:
                                    start = perf_counter()
                                    route.handler(ctx, packet)
                                    counters.observe_handler(packet.code, perf_counter() - start)
                                else:
                                    route.handler(ctx, packet)
                            finally:
                                outbox.batching = False
                    except Exception:
                        self._handler_failed(conn, route, packet)
                    if conn.stale or conn.closing:
                        self._drop_stale(conn, batch[i + 1 :] + conn.inbox)
                        conn.inbox = []
                        return
                if conn.inbox:
                    try:
                        self._send.send_nowait(conn)  # its next turn, behind the others
                    except (trio.WouldBlock, trio.ClosedResourceError):
                        continue  # the queue is full (or closing): go on with it here
                    requeued = True
                    return
        finally:
            if not (requeued or held):
                conn.scheduled = False
            conn.outbox.flush()
            conn.settle()

    # -- batches ---------------------------------------------------------------------------

    def _join_batch(self, ctx: Context, route: Route, packets: list[Packet], i: int) -> int:
        """Add the run of ``route``'s code starting at ``packets[i]`` to its pending batch.

        Returns how many packets it took (0: the batch handler takes none of them).
        """
        batch = route.batch
        assert batch is not None
        code = route.code
        limit = batch.run_limit(ctx, code)
        if limit <= 0:
            return 0
        end = min(len(packets), i + limit)
        j = i + 1
        while j < end and packets[j].code == code:
            j += 1
        runs = self._pending.get(batch)
        if runs is None:
            runs = self._pending[batch] = []
        runs.append((ctx, packets[i:j] if i or j < len(packets) else packets))
        self._pending_wakeup.wake()
        return j - i

    async def _start_batches(self, nursery: trio.Nursery) -> None:
        """Start a batch, in a task of its own, for every handler with runs pending."""
        while not self._closed:
            await self._pending_wakeup.wait()
            pending, self._pending = self._pending, {}
            for batch, runs in pending.items():
                nursery.start_soon(self._run_batch, batch, runs)

    async def _run_batch(self, batch: BatchHandler, runs: list[BatchRun]) -> None:
        """Answer one batch; then let each of its connections go on with its inbox."""
        for ctx, _ in runs:
            ctx._conn.outbox.batching = True  # its replies leave together, at the end
        counters = self._counters
        start = perf_counter()
        try:
            await batch.handle_batch(runs)
        except Exception:
            self._counters.handler_errors += 1
            log.exception(
                "batch handler %r raised on a batch of %d connections; closing them",
                batch,
                len(runs),
            )
            for ctx, _ in runs:
                ctx._conn.kick(KickReason.HANDLER_ERROR)
        finally:
            if counters.timing_every:  # always timed when metrics are on: each its share
                share = (perf_counter() - start) / sum(len(packets) for _, packets in runs)
                for _, packets in runs:
                    for packet in packets:
                        counters.observe_handler(packet.code, share)
            for ctx, _ in runs:
                self._release(ctx._conn)

    def _release(self, conn: Connection) -> None:
        """A batch answered ``conn``: send its replies, then handle the rest of its inbox."""
        conn.outbox.batching = False
        conn.scheduled = False
        if conn.stale or conn.closing:
            self._drop_stale(conn, conn.inbox)
        elif conn.inbox:
            packets, conn.inbox = conn.inbox, []
            if self.submit(conn, packets):  # an async handler's turn: through the queue
                conn.scheduled = True
                try:
                    self._send.send_nowait(conn)
                except trio.WouldBlock:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._send.send, conn)
                except trio.ClosedResourceError:
                    conn.scheduled = False
                    self._drop_stale(conn, conn.inbox)
        conn.outbox.flush()
        conn.settle()

    def _handler_failed(self, conn: Connection, route: Route, packet: Packet) -> None:
        self._counters.handler_errors += 1
        log.exception(
            "handler %s raised on msgCode %d from %s (conn %s); closing it",
            route.name,
            packet.code,
            conn.peer,
            conn.id,
        )
        conn.kick(KickReason.HANDLER_ERROR)

    def _drop_stale(self, conn: Connection, packets: list[Packet]) -> None:
        if packets:
            self._counters.drop(conn, DropReason.STALE, packets[0].code, len(packets))
        conn.inbox = []
