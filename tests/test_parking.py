"""ReadParking: readers parked in the worker's own epoll (real socket pairs, no network)."""

from __future__ import annotations

import math
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import trio
import trio.testing

from trioserver.parking import ReadParking, parking_supported
from trioserver.transport import SocketTransport

pytestmark = pytest.mark.skipif(not parking_supported(), reason="needs epoll (Linux)")


@pytest.fixture
async def parking() -> AsyncIterator[ReadParking]:
    parking = ReadParking()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(parking.run)
        yield parking
        nursery.cancel_scope.cancel()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


async def test_a_parked_reader_wakes_when_bytes_arrive(
    parking: ReadParking, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair
    woken = trio.Event()

    async def reader() -> None:
        await parking.wait_readable(ours)
        woken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert len(parking) == 1 and not woken.is_set()
        theirs.send(b"x")
        await woken.wait()
    assert len(parking) == 0
    assert ours.recv(10) == b"x"


async def test_only_the_ready_sockets_wake(parking: ReadParking) -> None:
    pairs = [socket.socketpair() for _ in range(5)]
    woken: list[int] = []

    async def reader(index: int, sock: socket.socket) -> None:
        await parking.wait_readable(sock)
        woken.append(index)

    try:
        async with trio.open_nursery() as nursery:
            for index, (ours, _) in enumerate(pairs):
                ours.setblocking(False)
                nursery.start_soon(reader, index, ours)
            await trio.testing.wait_all_tasks_blocked()
            pairs[1][1].send(b"x")
            pairs[3][1].close()  # EOF wakes its reader too
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(woken) == [1, 3]
            assert len(parking) == 3
            nursery.cancel_scope.cancel()
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    assert len(parking) == 0  # the cancelled ones were forgotten


async def test_a_cancelled_reader_can_wait_again(
    parking: ReadParking, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair
    with trio.move_on_after(0.01) as scope:
        await parking.wait_readable(ours)
    assert scope.cancelled_caught
    assert len(parking) == 0
    theirs.send(b"x")
    with trio.fail_after(5):
        await parking.wait_readable(ours)  # re-armed: the pending byte wakes it
    assert ours.recv(10) == b"x"


async def test_notify_closing_wakes_the_reader_with_closed_resource_error(
    parking: ReadParking, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, _ = pair
    failed = trio.Event()

    async def reader() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await parking.wait_readable(ours)
        failed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        parking.notify_closing(ours)
        ours.close()
        await failed.wait()
    assert len(parking) == 0
    with pytest.raises(trio.ClosedResourceError):
        parking.wait_readable(ours)


async def test_a_second_reader_of_one_socket_is_refused(
    parking: ReadParking, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair

    async def reader() -> None:
        await parking.wait_readable(ours)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            parking.wait_readable(ours)
        theirs.send(b"x")


async def test_a_reused_descriptor_number_registers_anew(parking: ReadParking) -> None:
    first, peer = socket.socketpair()
    first.setblocking(False)
    peer.send(b"x")
    await parking.wait_readable(first)  # registered, then disarmed by the event
    number = first.fileno()
    first.close()  # the kernel drops its registration
    peer.close()
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        reused = next(s for pair in pairs for s in pair if s.fileno() == number)
        other = next(s for pair in pairs if reused in pair for s in pair if s is not reused)
        reused.setblocking(False)
        other.send(b"y")
        with trio.fail_after(5):
            await parking.wait_readable(reused)
        assert reused.recv(10) == b"y"
    finally:
        for a, b in pairs:
            a.close()
            b.close()


async def test_socket_transport_waits_in_the_parking_and_close_wakes_it(
    parking: ReadParking, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair
    transport = SocketTransport(ours, parking)
    theirs.send(b"hello")
    await transport.wait_readable()
    assert transport.receive_nowait(100) == b"hello"
    assert transport.receive_nowait(100) is None
    closed = trio.Event()

    async def reader() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await transport.wait_readable()
        closed.set()

    transport.waited_at = -math.inf  # quiet since long ago
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert len(parking) == 1
        transport.close()
        await closed.wait()
    assert len(parking) == 0


@pytest.mark.parametrize("busy", [False, True])
async def test_a_busy_reader_keeps_trios_wait(
    parking: ReadParking, pair: tuple[socket.socket, socket.socket], busy: bool
) -> None:
    ours, theirs = pair
    transport = SocketTransport(ours, parking)
    # Its previous wait was a moment ago (busy) or long ago (quiet).
    transport.waited_at = time.monotonic() + 3600 if busy else -math.inf

    async def reader() -> None:
        await transport.wait_readable()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert len(parking) == (0 if busy else 1)
        theirs.send(b"x")
    assert len(parking) == 0


async def test_forget_wakes_the_reader_and_leaves_the_socket_open(
    parking: ReadParking, pair: tuple[socket.socket, socket.socket]
) -> None:
    """A handoff moves the socket elsewhere: the reader wakes, the socket still works."""
    ours, theirs = pair
    woken = trio.Event()

    async def reader() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await parking.wait_readable(ours)
        woken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        parking.forget(ours)
        await woken.wait()
    assert len(parking) == 0 and ours.fileno() >= 0
    theirs.send(b"x")
    with trio.fail_after(5):
        await parking.wait_readable(ours)  # registered anew
    assert ours.recv(10) == b"x"


async def test_a_worker_parks_its_idle_readers_and_drains_them() -> None:
    """Real loopback: a connection that has sent nothing waits in the worker's parking,
    is answered when it pings, and the drain closes it from there."""
    from trioserver.config import Address
    from trioserver.framer import PING
    from trioserver.testing import memory_config
    from trioserver.worker import Worker

    worker = Worker(memory_config(server__listen=(Address("127.0.0.1", 0),), http__listen=()))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        parking = worker.shared.parking
        assert parking is not None
        client = await trio.open_tcp_stream(*worker.addresses[0])
        await trio.testing.wait_all_tasks_blocked()
        assert len(worker.connections()) == 1 and len(parking) == 1
        await client.send_all(PING)
        with trio.fail_after(5):
            reply = b""
            while len(reply) < len(PING):
                reply += await client.receive_some(64)
        assert reply == PING
        worker.stop()
        with trio.fail_after(5):
            while await client.receive_some(64):
                pass  # the drain closed it: EOF
        await worker.wait_stopped()
        assert len(parking) == 0
        await client.aclose()
