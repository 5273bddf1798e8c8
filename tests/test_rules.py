"""Connection life rules in virtual time: heartbeat, lifetime, flood, send queue,
max connections, delayed recycle, half-close, abrupt reset."""

from __future__ import annotations

import errno
import itertools
import struct

import pytest
import trio
import trio.testing

from trioserver.client import Client
from trioserver.framer import PING, Packet, encode
from trioserver.handlers import Context, default_router
from trioserver.testing import (
    Bot,
    Delay,
    Fault,
    Reset,
    Split,
    StopReading,
    run_swarm,
    serve_in_memory,
)
from trioserver.worker import Worker

from .conftest import make_config

W = 20.0  # the default heartbeat wait
HEARTBEAT = 3 * W + 10  # 70 s


def app_router() -> object:
    router = default_router()
    router.add(100, lambda ctx, p: ctx.reply(100, p.body), name="echo")
    return router


async def closed_after(client: Client) -> float:
    """Wait for the server to close ``client``; return how long that took (virtual)."""
    start = trio.current_time()
    assert await client.at_eof()
    return trio.current_time() - start


async def test_silent_client_closed_at_exactly_3w_plus_10(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serve_in_memory() as server:
        client = await server.connect()
        assert await closed_after(client) == pytest.approx(HEARTBEAT, abs=1e-9)
        assert server.worker.statistics().kicks_by_reason == {"heartbeat": 1}


async def test_pinging_every_w_is_never_closed(autojump_clock: trio.testing.MockClock) -> None:
    async with serve_in_memory() as server:
        client = await server.connect()
        start = trio.current_time()
        for _ in range(10):
            await trio.sleep(W)
            await client.ping()
        assert trio.current_time() - start == pytest.approx(10 * W)
        # ... and after the last ping it still gets the whole 3W + 10
        assert await closed_after(client) == pytest.approx(HEARTBEAT, abs=1e-9)


@pytest.mark.parametrize(
    "faults",
    [[Split((1,))], [Split((3,)), Delay(2.0)], [Delay(5.0, direction="to_server")]],
    ids=["byte-by-byte", "split-and-latency", "slow-uplink"],
)
async def test_split_and_delayed_pings_refresh_from_their_arrival(
    autojump_clock: trio.testing.MockClock, faults: list[Fault]
) -> None:
    async with serve_in_memory() as server:
        client = await server.connect(faults=faults)
        for _ in range(10):
            await trio.sleep(W)
            await client.ping()
        # The server closes 3W + 10 after the last ping arrived; the client hears
        # both the reply and the close one downlink delay later: 3W + 10 apart.
        assert await closed_after(client) == pytest.approx(HEARTBEAT, abs=1e-9)
        assert server.worker.statistics().kicks_by_reason == {"heartbeat": 1}


async def test_200_bots_pinging_every_w_are_never_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def script(bot: Bot) -> None:
        await bot.sleep(bot.random.uniform(0, W))
        while True:
            await bot.ping()
            await bot.sleep(W)

    async with serve_in_memory() as server:
        report = await run_swarm(server, script, bots=200, duration=3 * HEARTBEAT)
    assert report.outcomes() == {"running": 200}
    assert report.statistics.kicks_by_reason == {}
    assert all(bot.replies[0] >= 3 * HEARTBEAT // W for bot in report.bots)


async def test_non_ping_traffic_does_not_refresh_by_default(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serve_in_memory(router=app_router()) as server:  # type: ignore[arg-type]
        client = await server.connect()
        start = trio.current_time()
        with pytest.raises(Exception):  # noqa: B017 - closed mid-loop, whatever the call
            while True:
                await trio.sleep(W)
                await client.request(100, b"hi")
        assert trio.current_time() - start == pytest.approx(HEARTBEAT + 10, abs=1e-9)
        assert server.worker.statistics().kicks_by_reason == {"heartbeat": 1}


async def test_any_packet_refreshes_when_configured(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = make_config(connection__any_packet_refreshes=True)
    async with serve_in_memory(config, app_router()) as server:  # type: ignore[arg-type]
        client = await server.connect()
        for _ in range(10):
            await trio.sleep(W)
            assert (await client.request(100, b"hi")).body == b"hi"
        assert server.worker.statistics().kicks_by_reason == {}


async def test_hard_lifetime_closes_at_its_time(autojump_clock: trio.testing.MockClock) -> None:
    config = make_config(connection__session_lifetime=45.0)
    async with serve_in_memory(config) as server:
        client = await server.connect()
        start = trio.current_time()

        async def keep_pinging() -> None:
            try:
                while True:
                    await client.ping()
                    await trio.sleep(5)
            except Exception:
                return

        await keep_pinging()
        assert trio.current_time() - start == pytest.approx(45.0, abs=1e-9)
        assert server.worker.statistics().kicks_by_reason == {"lifetime": 1}


async def test_heartbeat_off_keeps_silent_clients(autojump_clock: trio.testing.MockClock) -> None:
    async with serve_in_memory(make_config(connection__heartbeat=False)) as server:
        client = await server.connect()
        await trio.sleep(10 * HEARTBEAT)
        await client.ping()


async def test_slow_drip_header_is_closed_by_the_heartbeat(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serve_in_memory() as server:
        stream = await server.connect_stream()
        start = trio.current_time()

        async def drip() -> None:
            for byte in encode(100, b"x" * 100):  # 108 bytes at one a second
                try:
                    await stream.send_all(bytes([byte]))
                except trio.BrokenResourceError:
                    return  # closed at the same instant as this byte was due
                await trio.sleep(1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drip)
            assert await stream.receive_some() == b""  # the server closed it
            nursery.cancel_scope.cancel()
        assert trio.current_time() - start == pytest.approx(HEARTBEAT, abs=1e-9)
        assert server.worker.statistics().kicks_by_reason == {"heartbeat": 1}


async def test_flood_ten_fast_pass_the_eleventh_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serve_in_memory() as server:
        client = await server.connect()
        for _ in range(10):
            await client.ping()
            await trio.sleep(0.05)
        await client.send_raw(PING)
        assert await client.at_eof()
        assert server.worker.statistics().kicks_by_reason == {"flood": 1}
        assert server.worker.statistics().packets_by_code[0] == 11


@pytest.mark.parametrize(
    "faults", [None, [Split((1,))], [Split((5,))]], ids=["whole", "byte-by-byte", "by-5"]
)
async def test_flood_ten_pipelined_pass_the_eleventh_closes(faults: list[Fault] | None) -> None:
    async with serve_in_memory() as server:
        client = await server.connect(faults=faults)
        await client.send_raw(PING * 11)
        for _ in range(10):
            assert await client.receive_packet() == Packet(0)
        assert await client.at_eof()
        assert server.worker.statistics().kicks_by_reason == {"flood": 1}


async def test_110ms_spacing_never_floods(autojump_clock: trio.testing.MockClock) -> None:
    async with serve_in_memory() as server:
        client = await server.connect()
        for _ in range(200):
            await client.ping()
            await trio.sleep(0.11)
        assert server.worker.statistics().kicks_by_reason == {}


@pytest.mark.parametrize(
    "faults",
    [None, [StopReading(at=0, window=1)], [StopReading(at=0, window=4096), Split((7,))]],
    ids=["lockstep", "window-1", "window-4k-split"],
)
async def test_reader_that_never_reads_is_kicked_and_others_keep_being_served(
    faults: list[Fault] | None,
) -> None:
    config = make_config(connection__flood_check=False)
    async with serve_in_memory(config) as server:
        attacker = await server.connect_stream(lockstep=faults is None, faults=faults)
        victim = await server.connect()
        # The attacker pipelines pings and never reads a reply: the writer blocks
        # in send_all, and replies pile up until the 401st kicks it.
        sent = 0
        with pytest.raises(trio.BrokenResourceError):
            while True:
                await attacker.send_all(PING * 50)
                sent += 50
                await victim.ping()  # served throughout
                conns = server.worker.statistics()
                assert conns.outbox_replies <= 400  # bounded while it lasts
                # (counted in what the server read: a client may send faster than it reads)
                assert conns.packets_by_code[0] < 10_000, "never kicked"
        stats = server.worker.statistics()
        assert stats.kicks_by_reason == {"send_queue": 1}
        await victim.ping()


async def test_unread_reply_bytes_are_capped() -> None:
    router = default_router()
    router.add(100, lambda ctx, p: ctx.reply(100, bytes(20000)), name="big")
    config = make_config(connection__flood_check=False, connection__max_pending_bytes=100_000)
    async with serve_in_memory(config, router) as server:
        attacker = await server.connect_stream(lockstep=True)
        with pytest.raises(trio.BrokenResourceError):
            for _ in range(100):
                await attacker.send_all(encode(100))
        assert server.worker.statistics().kicks_by_reason == {"send_bytes": 1}


async def test_max_connections_refuses_only_while_that_many_are_live(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = make_config(server__max_connections=3, connection__recycle_delay=2.5)
    async with serve_in_memory(config) as server:
        clients = [await server.connect() for _ in range(3)]
        for client in clients:
            await client.ping()
        extra = await server.connect()
        assert await closed_after(extra) == 0  # accepted and closed at once
        stats = server.worker.statistics()
        assert stats.connections_refused == 1
        await clients[0].aclose()
        await trio.testing.wait_all_tasks_blocked()
        # its slot rests, but resting slots do not count against max_connections
        assert server.worker.statistics().connections_resting == 1
        early = await server.connect()
        await early.ping()
        assert server.worker.statistics().connections_refused == 1


async def test_a_reset_connection_rests_for_the_recycle_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = make_config(server__max_connections=1, connection__recycle_delay=2.5)
    async with serve_in_memory(config) as server:
        doomed = await server.connect(faults=[Reset(at=10.0)])
        await doomed.ping()
        await trio.sleep(10.0)  # it is reset now; the worker notices at once
        await trio.testing.wait_all_tasks_blocked()
        stats = server.worker.statistics()
        assert (stats.connections_open, stats.connections_resting) == (0, 1)
        await trio.sleep(2.4)
        assert server.worker.statistics().connections_resting == 1  # still resting
        await trio.sleep(0.1)
        await trio.testing.wait_all_tasks_blocked()  # the recycler is due at this instant too
        assert server.worker.statistics().connections_resting == 0  # 2.5 s: free again
        late = await server.connect()
        await late.ping()
        stats = server.worker.statistics()
        assert stats.connections_refused == 0
        assert stats.kicks_by_reason == {}  # a vanished peer is not a kick


async def test_churn_far_above_max_connections_per_recycle_delay_is_never_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """100 connections per second, each open 10 ms, with max_connections 5 and a 1 s rest:
    20 times more closes per delay than the limit, and not one refusal."""
    config = make_config(server__max_connections=5, connection__recycle_delay=1.0)
    async with serve_in_memory(config) as server:
        for _ in range(300):
            client = await server.connect()
            await client.ping()
            await trio.sleep(0.01)
            await client.aclose()
        await trio.testing.wait_all_tasks_blocked()
        stats = server.worker.statistics()
        assert stats.connections_refused == 0
        assert stats.connections_accepted == 300
        assert 95 <= stats.connections_resting <= 101  # the last second's closes rest
        assert server.worker.pool.statistics().slots <= 106


async def test_resting_slots_are_bounded_by_max_resting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = make_config(
        server__max_connections=5, connection__recycle_delay=60.0, connection__max_resting=20
    )
    async with serve_in_memory(config) as server:
        for _ in range(100):
            client = await server.connect()
            await client.ping()
            await client.aclose()
            await trio.testing.wait_all_tasks_blocked()
        stats = server.worker.statistics()
        assert (stats.connections_refused, stats.connections_resting) == (0, 20)
        assert server.worker.pool.statistics().slots == 21  # 20 resting + the one reused
        assert server.worker.recycler.ended_early == 80


async def test_half_close_gets_every_reply_then_eof() -> None:
    router = default_router()

    @router.route(100)
    async def slow(ctx: Context, packet: Packet) -> None:
        await trio.sleep(0.001)
        ctx.reply(100, packet.body)

    config = make_config(connection__flood_check=False)
    async with serve_in_memory(config, router) as server:
        stream = await server.connect_stream()
        client = Client(stream)
        await stream.send_all(b"".join(encode(100, struct.pack(">I", i)) for i in range(100)))
        await stream.send_eof()  # type: ignore[attr-defined]
        for i in range(100):
            assert (await client.receive_packet()).body == struct.pack(">I", i)
        assert await client.at_eof()
        assert server.worker.statistics().kicks_by_reason == {}


async def test_abrupt_disconnect_with_1000_replies_queued_harms_nothing() -> None:
    router = default_router()
    router.add(100, lambda ctx, p: ctx.reply(100, bytes(1000)), name="big")
    config = make_config(connection__flood_check=False)
    async with serve_in_memory(config, router) as server:
        stream = await server.connect_stream(lockstep=True)
        await stream.send_all(encode(100) * 300)
        await trio.testing.wait_all_tasks_blocked()
        await trio.aclose_forcefully(stream)  # vanish with replies queued
        other = await server.connect()
        for _ in range(10):
            await other.ping()
        await trio.testing.wait_all_tasks_blocked()
        stats = server.worker.statistics()
        assert stats.connections_open == 1
        assert stats.kicks_by_reason == {}


class FlakyListener(trio.abc.Listener[trio.abc.Stream]):
    """Fails ``failures`` accepts with EMFILE, then hands out one memory connection."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: list[float] = []
        self.client: trio.abc.Stream | None = None
        self._done = trio.Event()

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        self.attempts.append(trio.current_time())
        if len(self.attempts) <= self.failures:
            raise OSError(errno.EMFILE, "Too many open files")
        if self._done.is_set():
            await trio.sleep_forever()
        self._done.set()
        self.client, server = trio.testing.memory_stream_pair()
        return server

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_out_of_file_descriptors_backs_off_and_recovers(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    listener = FlakyListener(failures=6)
    worker = Worker(make_config(), listeners=[listener])
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        await listener._done.wait()
        # the 6 failures and the success (the loop may already be in its next accept)
        gaps = [round(b - a, 6) for a, b in itertools.pairwise(listener.attempts[:7])]
        assert gaps == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]  # doubling, capped: never a spin
        assert listener.client is not None
        await Client(listener.client).ping()  # and it serves once descriptors are back
        assert worker.statistics().accept_errors == 6
        worker.stop()
    assert sum("accept failed (EMFILE)" in r.getMessage() for r in caplog.records) == 6
