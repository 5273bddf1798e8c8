"""The connection's reader is one piece of code whatever the transport.

Each scenario runs twice: over a raw socket on loopback (the socket transport,
as in production) and over the testing kit's in-memory link (which implements
the same seam). The client side is a trio stream either way; the scenario
asserts the same bytes and the same counters on both, so the two paths cannot
diverge (the drain rule, half-close, a framing error) without a test failing.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from trioserver.config import Address
from trioserver.framer import PING, Packet, encode
from trioserver.handlers import Context, default_router
from trioserver.messages import MessageCode
from trioserver.stats import WorkerStatistics
from trioserver.testing import memory_config, serve_in_memory
from trioserver.worker import Worker

Connect = Callable[[], Awaitable[trio.abc.Stream]]


class Seen:
    """A ping handler that also tells the test how many pings the worker has handled."""

    def __init__(self) -> None:
        self.count = 0
        self._waiters: list[tuple[int, trio.Event]] = []

    def ping(self, ctx: Context, packet: Packet) -> None:
        ctx.send(PING)
        self.bump()

    def bump(self) -> None:
        self.count += 1
        for n, event in self._waiters:
            if self.count >= n:
                event.set()

    async def wait_for(self, n: int) -> None:
        event = trio.Event()
        self._waiters.append((n, event))
        if self.count >= n:
            event.set()
        await event.wait()


GATE = 100  # an async handler that waits for the test to open the gate


@asynccontextmanager
async def serving(
    kind: str, seen: Seen, gate: trio.Event | None = None, **settings: object
) -> AsyncIterator[tuple[Worker, Connect]]:
    router = default_router()
    router.add(MessageCode.PING, seen.ping, body_size=0, replace=True)
    if gate is not None:
        opened = gate

        async def wait_at_gate(ctx: Context, packet: Packet) -> None:
            seen.bump()
            await opened.wait()
            ctx.reply(GATE)

        router.add(GATE, wait_at_gate)
    config = memory_config(connection__flood_check=False, connection__recycle_delay=0, **settings)
    if kind == "memory":
        async with serve_in_memory(config, router) as server:
            yield server.worker, server.connect_stream
        return
    config = config.replace(server__listen=(Address("127.0.0.1", 0),), http__listen=())
    worker = Worker(config, router)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        host, port = worker.addresses[0]

        async def connect() -> trio.abc.Stream:
            return await trio.open_tcp_stream(host, port)

        try:
            yield worker, connect
        finally:
            worker.stop(grace=0)


async def read_until_eof(stream: trio.abc.Stream) -> bytes:
    out = bytearray()
    with trio.fail_after(10):
        while data := await stream.receive_some(65536):
            out += data
    return bytes(out)


async def read_exactly(stream: trio.abc.Stream, size: int) -> bytes:
    out = bytearray()
    with trio.fail_after(10):
        while len(out) < size:
            data = await stream.receive_some(size - len(out))
            assert data, "closed early"
            out += data
    return bytes(out)


async def stopped(worker: Worker, *streams: trio.abc.Stream) -> None:
    """Close the clients, stop the worker and wait until every connection is counted."""
    for stream in streams:
        await stream.aclose()
    worker.stop()
    with trio.fail_after(10):
        await worker.wait_stopped()


def counted(stats: WorkerStatistics) -> tuple[dict[str, int], dict[str, int]]:
    return dict(stats.kicks_by_reason), dict(stats.drops_by_reason)


KINDS = ["socket", "memory"]


@pytest.mark.parametrize("kind", KINDS)
async def test_drain_answers_what_was_read_then_closes_idle_connections(kind: str) -> None:
    seen = Seen()
    async with serving(kind, seen) as (worker, connect):
        busy = await connect()
        idle = await connect()
        await idle.send_all(PING)
        assert await read_exactly(idle, 8) == PING
        await busy.send_all(PING * 5)
        with trio.fail_after(10):
            await seen.wait_for(6)  # every ping has reached a handler
        worker.stop()
        assert await read_until_eof(busy) == PING * 5  # all answered, then closed
        assert await read_until_eof(idle) == b""  # idle: closed at once, nothing lost
        await stopped(worker, busy, idle)
        assert counted(worker.statistics()) == ({}, {})  # a drain is not a kick


@pytest.mark.parametrize("kind", KINDS)
async def test_half_close_gets_every_reply(kind: str) -> None:
    seen = Seen()
    async with serving(kind, seen) as (worker, connect):
        stream = await connect()
        assert isinstance(stream, trio.abc.HalfCloseableStream)
        await stream.send_all(PING * 3)
        await stream.send_eof()
        assert await read_until_eof(stream) == PING * 3
        await stopped(worker, stream)
        assert counted(worker.statistics()) == ({}, {})


@pytest.mark.parametrize("kind", KINDS)
async def test_bad_length_answers_the_packets_before_it(kind: str) -> None:
    seen = Seen()
    async with serving(kind, seen) as (worker, connect):
        stream = await connect()
        await stream.send_all(PING * 2 + struct.pack(">HHI", 0xFFFF, 0, 0))  # pkgLen too big
        assert await read_until_eof(stream) == PING * 2  # answered, then closed
        await stopped(worker, stream)
        assert counted(worker.statistics()) == ({"bad_length": 1}, {})


@pytest.mark.parametrize("kind", KINDS)
async def test_drain_reads_what_has_arrived_before_it_stops(kind: str) -> None:
    """Bytes that reached the transport before the drain are answered; then it closes.

    The reader is held (one-packet inbox, an async handler waiting at a gate) while
    most of the pings are still in the transport, unread, when the drain begins.
    """
    seen, gate = Seen(), trio.Event()
    async with serving(kind, seen, gate, server__inbox_size=1, server__receive_size=1024) as (
        worker,
        connect,
    ):
        stream = await connect()
        await stream.send_all(encode(GATE) + PING * 300)  # 2408 bytes: > one receive
        with trio.fail_after(10):
            await seen.wait_for(1)  # the gate handler runs; the reader waits for inbox room
        worker.stop()
        gate.set()
        assert await read_until_eof(stream) == encode(GATE) + PING * 300
        await stopped(worker, stream)
        assert counted(worker.statistics()) == ({}, {})
