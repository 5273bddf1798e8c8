"""A connection's outbox without a worker: caps, the writer task, batched and deferred sends."""

from __future__ import annotations

import trio
import trio.testing

from trioserver.framer import PING
from trioserver.handlers.router import Router
from trioserver.lifecycle import State
from trioserver.reasons import CloseReason, KickReason

from .fake_transport import FakeTransport, Harness, serving


def writers(h: Harness) -> int:
    """Tasks in the connection nursery besides the harness's own (timers, flusher, queue)."""
    return len(h.nursery.child_tasks) - 3


async def test_the_401st_waiting_reply_kicks_with_send_queue() -> None:
    async with serving(Router()) as h:
        conn, transport = h.serve(FakeTransport(room=0))  # the peer reads nothing
        await trio.testing.wait_all_tasks_blocked()
        outbox = conn.outbox
        assert all(outbox.send(PING) for _ in range(400))
        assert (outbox.pending_replies, outbox.pending_bytes) == (400, 400 * 8)
        assert not outbox.send(PING)  # the 401st
        assert (conn.state, conn.reason) == (State.CLOSING, KickReason.SEND_QUEUE)
        assert outbox.pending_replies == 400  # the one that crossed was not queued
        assert not outbox.send(PING)  # kicked: nothing more is taken
        await trio.testing.wait_all_tasks_blocked()
        assert conn.state is State.CLOSED and transport.closed
        assert transport.sends == []
        assert h.counters.kicks == {"send_queue": 1}


async def test_waiting_bytes_over_the_cap_kick_with_send_bytes() -> None:
    async with serving(Router(), max_pending_bytes=1000) as h:
        conn, transport = h.serve(FakeTransport(room=0))
        await trio.testing.wait_all_tasks_blocked()
        outbox = conn.outbox
        reply = b"r" * 100
        assert all(outbox.send(reply) for _ in range(10))  # exactly at the cap: allowed
        assert not outbox.send(b"!")  # one byte over
        assert (conn.state, conn.reason) == (State.CLOSING, KickReason.SEND_BYTES)
        assert (outbox.pending_replies, outbox.pending_bytes) == (10, 1000)
        await trio.testing.wait_all_tasks_blocked()
        assert h.counters.kicks == {"send_bytes": 1}
        assert transport.closed


async def test_replies_that_fit_leave_at_once_without_a_writer() -> None:
    async with serving(Router()) as h:
        conn = h.connection()
        transport = conn.transport
        assert isinstance(transport, FakeTransport)
        assert conn.outbox.send(PING)
        assert transport.sends == [PING]  # sent in the call, no task switch
        assert (conn.outbox.pending_replies, conn.outbox.pending_bytes) == (0, 0)
        assert not conn.outbox and not conn.outbox.writing
        assert writers(h) == 0


async def test_a_partial_send_starts_exactly_one_writer_which_sends_the_rest() -> None:
    async with serving(Router()) as h:
        transport = FakeTransport(room=50)
        conn = h.connection(transport)
        outbox = conn.outbox
        first = bytes(range(100))
        assert outbox.send(first)
        assert transport.sent == first[:50]  # what fit went out at once
        assert outbox.writing and writers(h) == 1
        assert (outbox.pending_replies, outbox.pending_bytes) == (1, 50)
        for i in range(5):  # more replies while the writer waits: no second writer
            assert outbox.send(b"%d" % i)
            await trio.testing.wait_all_tasks_blocked()
            assert writers(h) == 1
        assert transport.sent == first[:50]
        transport.make_room()  # the peer reads
        await trio.testing.wait_all_tasks_blocked()
        assert transport.sent == first + b"01234"
        assert not outbox.writing and writers(h) == 0  # the writer exists only while needed
        assert (outbox.pending_replies, outbox.pending_bytes) == (0, 0)
        assert outbox.send(b"after")  # and the next reply goes straight out again
        assert transport.sends[-1] == b"after" and writers(h) == 0


async def test_a_peer_that_goes_away_while_the_writer_waits_is_gone_not_kicked() -> None:
    async with serving(Router()) as h:
        transport = FakeTransport(room=4)
        conn = h.connection(transport)  # no reader: the writer is the one to find out
        conn.outbox.send(b"0123456789")
        await trio.testing.wait_all_tasks_blocked()
        assert conn.outbox.writing
        transport.reset = True
        transport.make_room()
        await trio.testing.wait_all_tasks_blocked()
        assert (conn.state, conn.reason) == (State.CLOSING, CloseReason.PEER_GONE)
        assert writers(h) == 0 and not conn.outbox.writing


async def test_replies_queued_while_batching_leave_in_one_send_on_flush() -> None:
    async with serving(Router()) as h:
        conn = h.connection()
        transport = conn.transport
        assert isinstance(transport, FakeTransport)
        outbox = conn.outbox
        outbox.batching = True  # what the queue does while plain handlers run
        for i in range(3):
            outbox.send(b"<%d>" % i)
        assert transport.sends == [] and outbox
        outbox.batching = False
        outbox.flush()
        assert transport.sends == [b"<0><1><2>"]


async def test_a_deferred_flush_sends_everything_in_one_send_once_the_task_waits() -> None:
    async with serving(Router()) as h:
        conn = h.connection()
        transport = conn.transport
        assert isinstance(transport, FakeTransport)
        outbox = conn.outbox
        outbox.batching = True
        outbox.send(b"a")
        outbox.send(b"b")
        outbox.batching = False
        outbox.defer()
        outbox.defer()
        assert transport.sends == []  # not yet: this task has not waited
        await trio.testing.wait_all_tasks_blocked()
        assert transport.sends == [b"ab"]
        assert not outbox.deferred


async def test_a_closed_outbox_drops_what_is_queued_and_takes_nothing() -> None:
    async with serving(Router()) as h:
        conn, transport = h.serve(FakeTransport(room=0))
        await trio.testing.wait_all_tasks_blocked()
        conn.outbox.send(b"queued")
        conn.kick(KickReason.APPLICATION)
        await trio.testing.wait_all_tasks_blocked()
        assert conn.state is State.CLOSED
        assert not conn.outbox  # what was queued is dropped, not kept
        assert not conn.outbox.send(b"late")
        transport.make_room()
        await trio.testing.wait_all_tasks_blocked()
        assert transport.sends == []
        assert writers(h) == 0
