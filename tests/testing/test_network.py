"""The simulated link: each fault against a real worker, in virtual time."""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing

from trioserver.client import Client, ConnectionClosed
from trioserver.framer import PING, Packet, encode
from trioserver.handlers import default_router
from trioserver.testing import (
    Delay,
    HalfClose,
    RandomSplit,
    Reset,
    Split,
    StopReading,
    memory_config,
    open_link,
    serve_in_memory,
)
from trioserver.transport import as_transport

NO_FLOOD = memory_config(connection__flood_check=False)


def echo_router() -> object:
    router = default_router()
    router.add(100, lambda ctx, p: ctx.reply(100, p.body), name="echo")
    return router


async def test_split_delivers_every_write_in_pieces_of_the_given_sizes() -> None:
    client, server = open_link([Split((1, 3))])
    await client.send_all(b"abcdefghij")
    pieces = [await server.receive_some() for _ in range(5)]
    assert pieces == [b"a", b"bcd", b"e", b"fgh", b"i"]
    await client.send_eof()
    assert await server.receive_some() == b"j"
    assert await server.receive_some() == b""


@pytest.mark.parametrize("split", [Split((1,)), Split((7, 1, 5)), RandomSplit(1, 9)])
async def test_worker_answers_in_order_whatever_the_split(split: Split | RandomSplit) -> None:
    wire = b"".join(encode(100, struct.pack(">I", i)) for i in range(50))
    async with serve_in_memory(NO_FLOOD, echo_router()) as server:  # type: ignore[arg-type]
        client = await server.connect(faults=[split], seed=3)
        await client.send_raw(wire + PING)
        for i in range(50):
            assert (await client.receive_packet()).body == struct.pack(">I", i)
        assert await client.receive_packet() == Packet(0)
        assert server.worker.statistics().drops_by_reason == {}


async def test_delay_is_latency_both_ways(autojump_clock: trio.testing.MockClock) -> None:
    async with serve_in_memory() as server:
        client = await server.connect(faults=[Delay(0.25)])
        assert await client.ping() == pytest.approx(0.5, abs=1e-9)
        slow_up = await server.connect(faults=[Delay(0.25, direction="to_server")])
        assert await slow_up.ping() == pytest.approx(0.25, abs=1e-9)


async def test_jitter_never_reorders_bytes(autojump_clock: trio.testing.MockClock) -> None:
    client, server = open_link([Delay(0.1, jitter=1.0)], seed=5)
    for i in range(20):
        await client.send_all(bytes([i]))
    received = b""
    while len(received) < 20:
        received += await server.receive_some()
    assert received == bytes(range(20))


async def test_a_reader_that_stops_reading_blocks_the_server_and_is_kicked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serve_in_memory(NO_FLOOD) as server:
        stream = await server.connect_stream(faults=[StopReading(at=1.0, window=4096)])
        client = Client(stream)
        assert await client.ping() == 0  # reads fine until 1 s
        await trio.sleep(1.0)
        with pytest.raises(trio.BrokenResourceError):
            for _ in range(100):
                await stream.send_all(PING * 50)  # replies fill the window, then the outbox
        stats = server.worker.statistics()
        assert stats.kicks_by_reason == {"send_queue": 1}
        with pytest.raises(ConnectionClosed):  # the stalled reader sees only the close
            await client.receive_packet()


async def test_reset_breaks_both_ends_at_its_time(autojump_clock: trio.testing.MockClock) -> None:
    async with serve_in_memory() as server:
        stream = await server.connect_stream(faults=[Reset(at=30.0)])
        client = Client(stream)
        start = trio.current_time()
        with pytest.raises(ConnectionClosed) as caught:
            await client.receive_packet()
        assert isinstance(caught.value.__cause__, trio.BrokenResourceError)
        assert trio.current_time() - start == pytest.approx(30.0)
        await trio.testing.wait_all_tasks_blocked()
        stats = server.worker.statistics()
        assert stats.connections_open == 0
        assert stats.kicks_by_reason == {}  # the peer vanished: not a kick


async def test_half_close_gets_every_reply_then_eof(autojump_clock: trio.testing.MockClock) -> None:
    async with serve_in_memory(NO_FLOOD, echo_router()) as server:  # type: ignore[arg-type]
        stream = await server.connect_stream(faults=[HalfClose(at=5.0), Split((3,))])
        client = Client(stream)
        await client.send_raw(b"".join(encode(100, struct.pack(">I", i)) for i in range(20)))
        for i in range(20):
            assert (await client.receive_packet()).body == struct.pack(">I", i)
        assert await client.at_eof()
        assert trio.current_time() == pytest.approx(5.0)
        with pytest.raises(trio.ClosedResourceError):
            await client.send_raw(PING)


async def test_link_end_is_a_well_behaved_stream() -> None:
    client, server = open_link([])
    await client.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await client.send_all(b"x")
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"x")  # the peer closed
    assert await server.receive_some() == b""
    with pytest.raises(ValueError):
        await server.receive_some(0)


@pytest.mark.parametrize(
    "faults",
    [(), (Split((1, 2)),), (Delay(0.01, jitter=0.02),)],
    ids=["plain", "split", "delayed"],
)
async def test_link_passes_trios_half_closeable_stream_checks(
    faults: tuple[Split | Delay, ...],
) -> None:
    async def make() -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
        return open_link(faults)

    await trio.testing.check_half_closeable_stream(make, None)


async def test_a_reader_of_a_delayed_link_wakes_once_when_the_bytes_arrive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The sender moves the waiting reader's deadline to the arrival time instead of
    waking it early to find nothing ready: one task step for the whole wait."""
    client, server = open_link([Delay(1.5)])
    steps: list[float] = []

    class Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task.name.endswith("reader"):
                steps.append(trio.current_time())

    got: list[bytes] = []

    async def reader() -> None:
        got.append(await client.receive_some())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, name="reader")
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.add_instrument(Steps())
        assert server.send_nowait(b"late") == 4
    assert got == [b"late"]
    assert steps == [1.5]


async def test_send_nowait_takes_what_the_window_has_room_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = open_link([StopReading(at=0.0, window=10), Delay(0.5)])
    assert as_transport(server) is server  # a link is a transport of its own
    assert server.send_nowait(b"") == 0
    assert server.send_nowait(b"abcdef") == 6
    assert server.send_nowait(b"ghijkl") == 4  # the window is full at 10
    assert server.send_nowait(b"x") == 0
    with trio.move_on_after(5.0):
        await server.send_all(b"more")  # a send that has to wait blocks, as it should
        pytest.fail("send_all did not block on a full window")
    assert client.send_nowait(b"ping") == 4  # the other direction has no window
    with trio.move_on_after(0.25):
        await server.receive_some()
        pytest.fail("bytes arrived before their delay")
    assert await server.receive_some() == b"ping"
    assert trio.current_time() == pytest.approx(5.5)


async def test_send_nowait_arrives_after_the_delay_in_order_with_send_all(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = open_link([Delay(0.1, jitter=1.0)], seed=5)
    for i in range(20):
        if i % 2:
            assert server.send_nowait(bytes([i])) == 1
        else:
            await server.send_all(bytes([i]))
    received = b""
    while len(received) < 20:
        received += await client.receive_some()
    assert received == bytes(range(20))
    assert trio.current_time() > 0.1


async def test_send_nowait_fails_like_send_all(autojump_clock: trio.testing.MockClock) -> None:
    client, server = open_link([Reset(at=1.0)])
    assert server.send_nowait(b"x") == 1
    await trio.sleep(1.0)
    with pytest.raises(trio.BrokenResourceError):
        server.send_nowait(b"y")
    client, server = open_link([])
    await server.send_eof()
    with pytest.raises(trio.ClosedResourceError):
        server.send_nowait(b"x")
    await client.aclose()
    with pytest.raises(trio.ClosedResourceError):
        client.send_nowait(b"x")


async def test_the_worker_sends_replies_on_a_link_without_a_writer_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    spawned: list[str] = []

    class Spawns(trio.abc.Instrument):
        def task_spawned(self, task: trio.lowlevel.Task) -> None:
            spawned.append(task.name)

    spawns = Spawns()
    async with serve_in_memory(NO_FLOOD) as server:
        client = await server.connect(faults=[Delay(0.01)])
        await client.ping()
        trio.lowlevel.add_instrument(spawns)
        for _ in range(10):
            assert await client.ping() == pytest.approx(0.02)
        await client.send_raw(PING * 20)  # one batch: one send, all replies
        for _ in range(20):
            assert await client.receive_packet() == Packet(0)
        trio.lowlevel.remove_instrument(spawns)
    assert spawned == []


def test_lockstep_and_faults_do_not_mix() -> None:
    from trioserver.testing import MemoryListener

    async def main() -> None:
        with pytest.raises(ValueError, match="StopReading"):
            await MemoryListener().connect(lockstep=True, faults=[])

    trio.run(main)
