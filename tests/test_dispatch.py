"""The message queue without a worker: real Connection objects over a fake transport."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from trioserver.connection import Connection
from trioserver.dispatch import MessageQueue
from trioserver.framer import FrameDecoder, Packet, encode
from trioserver.handlers import Context, Services
from trioserver.handlers.router import Router
from trioserver.lifecycle import State
from trioserver.reasons import KickReason
from trioserver.stats import Counters

from .fake_transport import FakeTransport, packets, serving, wire


def replies(transport: FakeTransport) -> list[Packet]:
    """Every packet the server sent on ``transport``."""
    events = FrameDecoder().receive_packets(transport.sent)
    assert all(type(e) is Packet for e in events)
    return events  # type: ignore[return-value]


class Recorder:
    """Handlers that note what they handled (by connection) and echo it back."""

    def __init__(self, *, sleepy: bool = False) -> None:
        self.handled: list[tuple[str, bytes]] = []
        self.sleepy = sleepy

    def plain(self, ctx: Context, packet: Packet) -> None:
        self.handled.append((ctx.connection_id, packet.body))
        ctx.reply(packet.code, packet.body)

    async def waiting(self, ctx: Context, packet: Packet) -> None:
        self.handled.append((ctx.connection_id, packet.body))
        if self.sleepy:  # for a while, so that handler tasks overtake each other
            await trio.sleep(packet.body[-1] % 5 / 100)
        else:
            await trio.lowlevel.checkpoint()
        ctx.reply(packet.code, packet.body)

    def router(self) -> Router:
        router = Router()
        router.add(100, self.plain)
        router.add(101, self.waiting)
        return router

    def of(self, conn: Connection) -> list[bytes]:
        return [body for cid, body in self.handled if cid == conn.id]


async def test_order_on_each_connection_is_kept_with_several_handler_tasks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    record = Recorder(sleepy=True)
    async with serving(record.router(), handler_tasks=4) as h:
        conns = [h.connection() for _ in range(3)]
        most_busy = 0
        for batch in range(5):
            for n, conn in enumerate(conns):
                bodies = [b"%d-%d-%d" % (n, batch, i) for i in range(4)]
                # a mix of plain and async handlers: once queued, all keep their order
                mixed = [Packet(101 if i % 2 else 100, body) for i, body in enumerate(bodies)]
                if h.queue.submit(conn, mixed):
                    await h.queue.schedule(conn)
            await trio.sleep(0.015)
            most_busy = max(most_busy, h.queue.busy)
        await trio.sleep(10)
        assert most_busy > 1  # the handler tasks really did run side by side
        for n, conn in enumerate(conns):
            expected = [b"%d-%d-%d" % (n, b, i) for b in range(5) for i in range(4)]
            assert record.of(conn) == expected
            assert [p.body for p in replies(conn.transport)] == expected  # type: ignore[arg-type]


async def test_a_connection_is_in_the_queue_at_most_once() -> None:
    """Scheduled again while it waits in the queue, or while a handler drains it: it is
    not queued twice, and its new packets wait in its inbox, in order."""
    record = Recorder()
    gate = trio.Event()

    async def held(ctx: Context, packet: Packet) -> None:
        await gate.wait()
        record.plain(ctx, packet)

    router = record.router()
    router.add(102, held)
    async with serving(router, handler_tasks=2) as h:
        holder, conn = h.connection(), h.connection()
        assert h.queue.submit(holder, packets(102, b"hold"))
        await h.queue.schedule(holder)
        assert h.queue.submit(conn, packets(102, b"a"))
        await h.queue.schedule(conn)
        await trio.testing.wait_all_tasks_blocked()
        assert (h.queue.busy, h.queue.depth) == (2, 0)  # both tasks wait on the gate
        # conn is being drained: more work goes to its inbox, not into the queue.
        assert not h.queue.submit(conn, packets(101, b"b"))
        await h.queue.schedule(conn)  # a no-op: it is already scheduled
        assert not h.queue.submit(conn, packets(100, b"c"))  # plain, yet queued behind
        assert h.queue.depth == 0
        assert [p.body for p in conn.inbox] == [b"b", b"c"]
        # A third connection waits in the queue; scheduling it again adds nothing.
        third = h.connection()
        assert h.queue.submit(third, packets(101, b"t"))
        for _ in range(3):
            await h.queue.schedule(third)
        assert h.queue.depth == 1
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert record.of(conn) == [b"a", b"b", b"c"]
        assert record.of(third) == [b"t"]  # handled once
        for c in (holder, conn, third):
            assert (c.scheduled, c.inbox) == (False, [])
        assert h.queue.depth == 0


async def test_a_full_queue_makes_schedule_wait_and_drops_nothing() -> None:
    """Backpressure: the reader waits in schedule() while the queue is full."""
    record = Recorder()
    gate = trio.Event()

    async def held(ctx: Context, packet: Packet) -> None:
        await gate.wait()
        record.plain(ctx, packet)

    router = record.router()
    router.add(102, held)
    async with serving(router, handler_tasks=1, queue_size=2) as h:
        holder, *others = [h.connection() for _ in range(5)]
        assert h.queue.submit(holder, packets(102, b"held"))
        await h.queue.schedule(holder)
        await trio.testing.wait_all_tasks_blocked()  # the one handler task waits on gate
        scheduled: list[Connection] = []

        async def reader(conn: Connection) -> None:
            assert h.queue.submit(conn, packets(101, conn.id.encode()))
            await h.queue.schedule(conn)
            scheduled.append(conn)

        for conn in others:
            h.nursery.start_soon(reader, conn)
        await trio.testing.wait_all_tasks_blocked()
        assert h.queue.depth == h.queue.capacity == 2
        assert len(scheduled) == 2  # the other two readers are still waiting in schedule()
        assert all(c.scheduled for c in others)
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert set(scheduled) == set(others)
        assert sorted(body for _, body in record.handled) == sorted(
            [b"held", *(c.id.encode() for c in others)]
        )
        assert h.counters.drops == {}


async def test_a_closed_connections_inbox_is_dropped_and_counted_as_stale(
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = Recorder()
    gate = trio.Event()

    async def held(ctx: Context, packet: Packet) -> None:
        await gate.wait()
        record.plain(ctx, packet)

    router = record.router()
    router.add(102, held)
    caplog.set_level(logging.INFO, logger="trioserver")
    async with serving(router, handler_tasks=1, capacity=2) as h:
        holder = h.connection()
        assert h.queue.submit(holder, packets(102, b"held"))
        await h.queue.schedule(holder)
        await trio.testing.wait_all_tasks_blocked()
        doomed, transport = h.serve()
        transport.feed(wire(101, b"x", b"y", b"z"))
        await trio.testing.wait_all_tasks_blocked()
        assert [p.body for p in doomed.inbox] == [b"x", b"y", b"z"]
        slot = doomed.slot
        doomed.kick(KickReason.APPLICATION)  # closes while its packets wait in the queue
        await trio.testing.wait_all_tasks_blocked()
        assert doomed.stale and doomed.state is State.CLOSED and transport.closed
        newcomer = h.connection()
        assert newcomer.slot is slot  # the slot changed hands (recycle_delay 0)
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert record.handled == [(holder.id, b"held")]  # none of x, y, z was handled
        assert h.counters.drops == {"stale": 3}
        assert transport.sends == []
    assert sum("closed before a handler reached it" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("kind", ["plain", "async"])
async def test_a_handler_that_raises_kicks_only_its_connection(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    record = Recorder()
    router = Router()

    def boom(ctx: Context, packet: Packet) -> None:
        if packet.body == b"boom":
            raise RuntimeError("application bug")
        record.plain(ctx, packet)

    async def async_boom(ctx: Context, packet: Packet) -> None:
        await trio.lowlevel.checkpoint()
        boom(ctx, packet)

    router.add(100, boom if kind == "plain" else async_boom)
    async with serving(router, handler_tasks=2) as h:
        victim, victim_wire = h.serve()
        bystander, bystander_wire = h.serve()
        victim_wire.feed(wire(100, b"before", b"boom", b"after"))
        bystander_wire.feed(wire(100, b"1", b"2"))
        await trio.testing.wait_all_tasks_blocked()
        assert (victim.state, victim.reason) == (State.CLOSED, KickReason.HANDLER_ERROR)
        assert victim_wire.closed
        assert record.of(victim) == [b"before"]  # "after" is never handled
        assert [p.body for p in replies(victim_wire)] == [b"before"]
        # The other connection is untouched and still served.
        bystander_wire.feed(wire(100, b"3"))
        await trio.testing.wait_all_tasks_blocked()
        assert bystander.state is State.IDLE and not bystander_wire.closed
        assert [p.body for p in replies(bystander_wire)] == [b"1", b"2", b"3"]
        assert h.counters.handler_errors == 1
        assert h.counters.kicks == {"handler_error": 1}
        assert h.counters.drops == {"stale": 1}  # "after": its connection closed first
    assert any("application bug" in (r.exc_text or "") for r in caplog.records)


async def test_plain_handlers_run_inline_in_submit() -> None:
    """No hop through the queue: when submit returns, they ran and the replies were sent
    (no checkpoint came between, so no handler task can have run them)."""
    record = Recorder()
    async with serving(record.router()) as h:
        conn = h.connection()
        assert not h.queue.submit(conn, packets(100, b"a", b"b"))
        assert record.of(conn) == [b"a", b"b"]
        assert [p.body for p in replies(conn.transport)] == [b"a", b"b"]  # type: ignore[arg-type]
        assert (conn.scheduled, conn.inbox, h.queue.depth) == (False, [], 0)


async def test_submit_queues_from_the_first_async_handler_on_to_keep_the_order() -> None:
    record = Recorder()
    async with serving(record.router()) as h:
        conn = h.connection()
        batch = [Packet(100, b"p1"), Packet(101, b"a1"), Packet(100, b"p2")]
        assert h.queue.submit(conn, batch)  # True: schedule it
        assert record.of(conn) == [b"p1"]  # p2 waits behind a1, though it is plain
        assert conn.inbox == batch[1:]
        await h.queue.schedule(conn)  # room in the queue: no checkpoint, nothing ran yet
        assert not h.queue.submit(conn, packets(100, b"p3"))
        assert record.of(conn) == [b"p1"] and [p.body for p in conn.inbox] == [b"a1", b"p2", b"p3"]


async def test_replies_of_a_run_of_plain_handlers_leave_in_one_send() -> None:
    record = Recorder()
    async with serving(record.router()) as h:
        conn = h.connection()
        transport = conn.transport
        assert isinstance(transport, FakeTransport)
        h.queue.submit(conn, packets(100, b"1", b"2", b"3", b"4"))
        assert transport.sends == [wire(100, b"1", b"2", b"3", b"4")]


async def test_in_a_handler_task_plain_replies_after_an_async_one_leave_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    record = Recorder()
    async with serving(record.router()) as h:
        conn = h.connection()
        transport = conn.transport
        assert isinstance(transport, FakeTransport)
        batch = [Packet(101, b"a"), Packet(100, b"1"), Packet(100, b"2"), Packet(100, b"3")]
        assert h.queue.submit(conn, batch)
        await h.queue.schedule(conn)
        await trio.sleep(1)
        assert transport.sends == [encode(101, b"a"), wire(100, b"1", b"2", b"3")]


def test_at_least_one_handler_task() -> None:
    with pytest.raises(ValueError, match="handler_tasks must be at least 1, got 0"):
        MessageQueue(Router(), Services(), Counters(), size=1, handler_tasks=0)


async def test_a_closed_queue_ends_its_tasks(autojump_clock: trio.abc.Clock) -> None:
    """After close() the handler tasks and the batch starter end: run() returns."""
    queue = MessageQueue(Router(), Services(), Counters(), size=4, handler_tasks=2)
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.run)
            queue.close()
