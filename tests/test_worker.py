"""A real worker over in-memory streams: ordering, fan-in, drops, kicks, stale messages."""

from __future__ import annotations

import logging
import struct

import pytest
import trio
import trio.testing

from trioserver.client import Client, ConnectionClosed
from trioserver.framer import PING, Packet, encode
from trioserver.handlers import Context, default_router
from trioserver.reasons import DropReason, KickReason
from trioserver.testing import serve_in_memory

from .conftest import make_config

NO_FLOOD = make_config(connection__flood_check=False)


async def test_1000_pipelined_pings_in_order() -> None:
    router = default_router()

    @router.route(100)
    def echo(ctx: Context, packet: Packet) -> None:
        ctx.reply(100, packet.body)

    async with serve_in_memory(NO_FLOOD, router) as server:
        client = await server.connect()
        # interleave pings and numbered echoes so order is visible
        wire = b"".join(PING if i % 2 else encode(100, struct.pack(">I", i)) for i in range(1000))
        await client.send_raw(wire)
        for i in range(1000):
            packet = await client.receive_packet()
            if i % 2:
                assert packet == Packet(0, b"")
            else:
                assert packet == Packet(100, struct.pack(">I", i))
        stats = server.worker.statistics()
        assert stats.packets_by_code == {0: 500, 100: 500}


async def test_async_handlers_keep_per_connection_order() -> None:
    """8 handler tasks, handlers that sleep different times: replies still in order."""
    router = default_router()

    @router.route(100)
    async def slow_echo(ctx: Context, packet: Packet) -> None:
        (n,) = struct.unpack(">I", packet.body)
        await trio.sleep((n * 7 % 5) / 1000)
        ctx.reply(100, packet.body)

    config = NO_FLOOD.replace(server__handler_tasks=8)
    async with serve_in_memory(config, router) as server:
        clients = [await server.connect() for _ in range(10)]

        async def run(client: Client) -> None:
            await client.send_raw(b"".join(encode(100, struct.pack(">I", i)) for i in range(50)))
            for i in range(50):
                assert (await client.receive_packet()).body == struct.pack(">I", i)

        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(run, client)


async def test_100_concurrent_connections_all_answered() -> None:
    async with serve_in_memory(NO_FLOOD) as server:
        results: list[int] = []

        async def one() -> None:
            client = await server.connect()
            await client.send_raw(PING * 20)
            for _ in range(20):
                assert await client.receive_packet() == Packet(0)
            results.append(1)

        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(one)
        assert len(results) == 100
        assert server.worker.statistics().packets_by_code[0] == 2000


@pytest.mark.parametrize("length", [0, 7, 29001, 65535])
async def test_bad_length_closes_the_connection(length: int) -> None:
    async with serve_in_memory() as server:
        client = await server.connect()
        await client.send_raw(struct.pack(">HHI", length, 0, 0) + PING)
        assert await client.at_eof()
        other = await server.connect()
        await other.ping()
    assert server.worker.statistics().kicks_by_reason == {"bad_length": 1}


DROPS = [
    ("bad_crc", struct.pack(">HHI", 13, 100, 12345) + b"hello"),
    ("crc_on_empty_body", struct.pack(">HHI", 8, 0, 1)),
    ("unknown_code", encode(4242, b"x")),
    ("unknown_code", encode(3)),  # reserved
    ("bad_body_size", encode(0, b"ping with a body")),
]


@pytest.mark.parametrize(("reason", "wire"), DROPS, ids=[d[0] for d in DROPS])
async def test_dropped_packets_are_counted_logged_and_harmless(
    reason: str, wire: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    router = default_router()
    router.add(100, lambda ctx, p: ctx.reply(100, p.body))
    caplog.set_level(logging.INFO, logger="trioserver")
    async with serve_in_memory(NO_FLOOD, router) as server:
        client = await server.connect()
        await client.send_raw(wire * 3)
        await client.ping()  # answered: the connection stays usable
        stats = server.worker.statistics()
        assert stats.drops_by_reason == {reason: 3}
        assert stats.kicks_by_reason == {}
    lines = [r for r in caplog.records if "dropped from" in r.getMessage()]
    assert len(lines) == 1  # logged once per connection and reason, counted every time
    assert str(DropReason(reason)) in lines[0].getMessage()


async def test_user_handler_for_a_new_code() -> None:
    router = default_router()

    @router.route(1000, body_size=4)
    async def double(ctx: Context, packet: Packet) -> None:
        (n,) = struct.unpack(">i", packet.body)
        ctx.reply(1001, struct.pack(">i", 2 * n))

    async with serve_in_memory(make_config(), router) as server:
        client = await server.connect()
        reply = await client.request(1000, struct.pack(">i", 21))
        assert reply == Packet(1001, struct.pack(">i", 42))


async def test_handler_error_closes_only_that_connection(caplog: pytest.LogCaptureFixture) -> None:
    router = default_router()

    @router.route(100)
    def broken(ctx: Context, packet: Packet) -> None:
        raise RuntimeError("application bug")

    async with serve_in_memory(NO_FLOOD, router) as server:
        client = await server.connect()
        other = await server.connect()
        await client.send(100)
        assert await client.at_eof()
        await other.ping()
        assert server.worker.statistics().handler_errors == 1
    assert any("application bug" in (r.exc_text or "") for r in caplog.records)


async def test_message_for_a_recycled_slot_is_dropped_as_stale() -> None:
    """B's packet waits in the queue behind A's slow handler; B is kicked, its slot
    goes to C; when a handler finally reaches B's packet, it is stale."""
    router = default_router()
    gate = trio.Event()
    handled: list[bytes] = []

    @router.route(100)
    async def slow(ctx: Context, packet: Packet) -> None:
        handled.append(packet.body)
        if packet.body == b"A":
            await gate.wait()
        ctx.reply(100, packet.body)

    config = NO_FLOOD.replace(
        server__handler_tasks=1, server__max_connections=2, connection__recycle_delay=0
    )
    async with serve_in_memory(config, router) as server:
        worker = server.worker
        a = await server.connect()
        await a.send(100, b"A")
        await trio.testing.wait_all_tasks_blocked()
        assert handled == [b"A"]  # the only handler task is now stuck on A
        b = await server.connect()
        await b.send(100, b"B")
        await trio.testing.wait_all_tasks_blocked()
        (b_conn,) = [c for c in worker.connections() if c.inbox]
        b_slot, b_sequence = b_conn.slot, b_conn.sequence
        b_conn.kick(KickReason.APPLICATION)  # B is closed while its packet waits
        assert await b.at_eof()
        await trio.testing.wait_all_tasks_blocked()
        c = await server.connect()
        await c.send(100, b"C")
        await trio.testing.wait_all_tasks_blocked()
        c_conn = next(x for x in worker.connections() if x.peer != b_conn.peer and x.inbox)
        assert c_conn.slot is b_slot and c_conn.sequence != b_sequence  # recycled
        gate.set()
        assert (await a.receive_packet()).body == b"A"
        assert (await c.receive_packet()).body == b"C"
        assert handled == [b"A", b"C"]
        assert worker.statistics().drops_by_reason == {"stale": 1}


async def test_statistics_snapshot_counts_connections() -> None:
    async with serve_in_memory(make_config(connection__recycle_delay=5)) as server:
        clients = [await server.connect() for _ in range(3)]
        for client in clients:
            await client.ping()
        await clients[0].aclose()
        await trio.testing.wait_all_tasks_blocked()
        stats = server.worker.statistics()
        assert (stats.connections_open, stats.connections_resting) == (2, 1)
        assert stats.connections_accepted == 3
        assert stats.queue_capacity == 1024


async def test_client_reports_a_closed_connection() -> None:
    async with serve_in_memory() as server:
        client = await server.connect()
        await client.send_raw(struct.pack(">HHI", 1, 0, 0))
        with pytest.raises(ConnectionClosed):
            await client.ping()


async def test_a_busy_connection_waits_its_turn_behind_others() -> None:
    """One handler task: A's packets that arrive while A is being handled wait until B,
    queued meanwhile, has had its turn (no connection can hold a handler task)."""
    router = default_router()
    gate = trio.Event()
    handled: list[bytes] = []

    @router.route(100)
    async def record(ctx: Context, packet: Packet) -> None:
        handled.append(packet.body)
        if packet.body == b"A0":
            await gate.wait()
        ctx.reply(100, packet.body)

    config = NO_FLOOD.replace(server__handler_tasks=1)
    async with serve_in_memory(config, router) as server:
        a = await server.connect()
        b = await server.connect()
        await a.send_raw(b"".join(encode(100, b"A%d" % i) for i in range(5)))
        await trio.testing.wait_all_tasks_blocked()
        assert handled == [b"A0"]  # the handler task is inside A's first visit
        await a.send_raw(b"".join(encode(100, b"A%d" % i) for i in range(5, 10)))
        await b.send(100, b"B")
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
        for i in range(10):
            assert (await a.receive_packet()).body == b"A%d" % i
        assert (await b.receive_packet()).body == b"B"
        first_visit = [b"A%d" % i for i in range(5)]
        assert handled == [*first_visit, b"B", *(b"A%d" % i for i in range(5, 10))]


async def test_a_drain_waits_briefly_for_a_new_connections_first_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Accepted just before the drain, nothing sent yet: its request (on its way) is
    answered; one that never sends is closed quietly after 1 s, not counted as a kick."""
    async with serve_in_memory(NO_FLOOD) as server:
        late = await server.connect()
        silent = await server.connect()
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        server.worker.stop()
        await trio.sleep(0.5)
        assert await late.request(0) == Packet(0)
        assert await late.at_eof()
        assert await silent.at_eof()
        assert trio.current_time() - start == pytest.approx(1.0)
        assert server.worker.statistics().kicks_by_reason == {}


async def test_a_connection_whose_reader_starts_after_the_drain_gets_the_same_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Accepted, but its task not yet run when the drain begins: finding nothing to
    read is not the end of it; its first request is still awaited for the grace."""
    async with serve_in_memory(NO_FLOOD) as server:
        late = await server.connect()
        server.worker.stop()  # before the reader's first step
        await trio.sleep(0.5)
        assert await late.request(0) == Packet(0)
        assert await late.at_eof()
        assert server.worker.statistics().kicks_by_reason == {}
