"""The transport seam: one contract, run against every implementation, then each one's own.

The contract tests run against a ``SocketTransport`` (on a Unix socketpair and on
loopback TCP), a ``StreamTransport`` (over trio's memory and lockstep stream
pairs and over a TCP ``trio.SocketStream``) and the testing kit's ``LinkEnd``.
The peer is always a trio stream, so one test body drives them all.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import attrs
import pytest
import trio
import trio.testing

from trioserver.testing._faults import StopReading
from trioserver.testing._network import LinkEnd, open_link
from trioserver.transport import (
    LINGER_TIMEOUT,
    SocketTransport,
    StreamTransport,
    Transport,
    as_transport,
    linger,
)

#: Bounds a wait on real sockets so a broken test fails instead of hanging (never a sleep).
PATIENCE = 10.0


# -- the pairs -----------------------------------------------------------------------------------


@attrs.define(eq=False)
class Pair:
    """A transport under test and the trio stream at its other end."""

    transport: Transport
    peer: trio.abc.Stream
    #: Makes the connection reset (None: this kind of transport cannot be reset).
    reset: Callable[[], Awaitable[None]] | None = None


def tcp_socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected (server side, client side) pair of TCP sockets on 127.0.0.1."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


def trio_stream(sock: socket.socket) -> trio.SocketStream:
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


def reset_by(peer_sock: socket.socket, peer: trio.abc.Stream) -> Callable[[], Awaitable[None]]:
    """The peer closes with SO_LINGER 0: TCP sends a reset instead of a FIN."""

    async def reset() -> None:
        peer_sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await peer.aclose()

    return reset


def unix_reset_by(transport: Transport, peer: trio.abc.Stream) -> Callable[[], Awaitable[None]]:
    """A Unix socket resets when its peer closes with bytes it never read."""

    async def reset() -> None:
        assert transport.send_nowait(b"never read") == 10
        await peer.aclose()

    return reset


async def make_pair(kind: str) -> Pair:
    if kind == "socket-unix":
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        transport: Transport = SocketTransport(ours)
        peer: trio.abc.Stream = trio_stream(theirs)
        return Pair(transport, peer, unix_reset_by(transport, peer))
    if kind == "socket-tcp":
        ours, theirs = tcp_socketpair()
        ours.setblocking(False)
        peer = trio_stream(theirs)
        return Pair(SocketTransport(ours), peer, reset_by(theirs, peer))
    if kind == "stream-tcp":
        ours, theirs = tcp_socketpair()
        peer = trio_stream(theirs)
        return Pair(StreamTransport(trio_stream(ours)), peer, reset_by(theirs, peer))
    if kind == "stream-memory":
        theirs_m, ours_m = trio.testing.memory_stream_pair()
        return Pair(StreamTransport(ours_m), theirs_m)
    if kind == "stream-lockstep":
        theirs_l, ours_l = trio.testing.lockstep_stream_pair()
        return Pair(StreamTransport(ours_l), theirs_l)
    if kind == "link":
        client, server = open_link()

        async def reset() -> None:
            client.reset()

        return Pair(server, client, reset)
    raise AssertionError(kind)


KINDS = ["socket-unix", "socket-tcp", "stream-tcp", "stream-memory", "stream-lockstep", "link"]
RESETTABLE = ["socket-unix", "socket-tcp", "stream-tcp", "link"]


@pytest.fixture(params=KINDS)
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    made = await make_pair(request.param)
    yield made
    await made.transport.aclose()
    await trio.aclose_forcefully(made.peer)


@pytest.fixture(params=RESETTABLE)
async def resettable(request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    made = await make_pair(request.param)
    yield made
    await made.transport.aclose()
    await trio.aclose_forcefully(made.peer)


# -- helpers that use only the seam --------------------------------------------------------------


async def receive(transport: Transport, max_bytes: int = 65536) -> bytes:
    """What a reader gets next: bytes, or b"" at EOF (waits only when nothing is there)."""
    with trio.fail_after(PATIENCE):
        while (data := transport.receive_nowait(max_bytes)) is None:
            await transport.wait_readable()
    return data


async def receive_to_eof(transport: Transport, max_bytes: int = 65536) -> list[bytes]:
    chunks = []
    while data := await receive(transport, max_bytes):
        assert len(data) <= max_bytes
        chunks.append(data)
    return chunks


async def send(transport: Transport, data: bytes) -> None:
    """The outbox's way: what fits without waiting, then the rest by ``send_all``."""
    sent = transport.send_nowait(data)
    assert 0 <= sent <= len(data)
    if sent < len(data):
        await transport.send_all(memoryview(data)[sent:])


async def peer_receive_to_eof(peer: trio.abc.Stream) -> bytes:
    chunks = []
    with trio.fail_after(PATIENCE):
        while chunk := await peer.receive_some(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def peer_sends(peer: trio.abc.Stream, data: bytes, eof: bool = False) -> None:
    await peer.send_all(data)
    if eof:
        assert isinstance(peer, trio.abc.HalfCloseableStream)
        await peer.send_eof()


# -- the contract --------------------------------------------------------------------------------


async def test_nothing_to_receive_is_none_not_a_wait(pair: Pair) -> None:
    assert pair.transport.receive_nowait(100) is None
    assert pair.transport.receive_nowait(100) is None


async def test_bytes_the_peer_sent_are_received_in_order(pair: Pair) -> None:
    data = bytes(range(256)) * 4
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer_sends, pair.peer, data)  # lockstep: sends wait for us
        got = b""
        while len(got) < len(data):
            chunk = await receive(pair.transport)
            assert chunk, f"EOF after {len(got)} of {len(data)} bytes"
            got += chunk
    assert got == data


async def test_receive_never_returns_more_than_asked(pair: Pair) -> None:
    data = b"0123456789" * 3
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer_sends, pair.peer, data, True)
        chunks = await receive_to_eof(pair.transport, 7)
    assert b"".join(chunks) == data
    assert all(len(c) <= 7 for c in chunks)


async def test_eof_is_empty_bytes_after_everything_sent(pair: Pair) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer_sends, pair.peer, b"last words", True)
        assert b"".join(await receive_to_eof(pair.transport)) == b"last words"
    assert await receive(pair.transport) == b""  # and it stays at EOF


async def test_wait_readable_waits_until_the_peer_sends(pair: Pair) -> None:
    woke = trio.Event()

    async def reader() -> None:
        await pair.transport.wait_readable()
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()
        nursery.start_soon(peer_sends, pair.peer, b"x")
        with trio.fail_after(PATIENCE):
            await woke.wait()
    assert await receive(pair.transport) == b"x"


async def test_what_is_sent_reaches_the_peer_then_eof(pair: Pair) -> None:
    data = b"reply " * 1000
    async with trio.open_nursery() as nursery:
        got: list[bytes] = []

        async def peer_reads() -> None:
            got.append(await peer_receive_to_eof(pair.peer))

        nursery.start_soon(peer_reads)
        await send(pair.transport, data)
        await send(pair.transport, b"and more")
        await pair.transport.send_eof()
    assert got == [data + b"and more"]


async def test_a_closed_transport_refuses_to_read_or_write(pair: Pair) -> None:
    transport = pair.transport
    await transport.aclose()
    await transport.aclose()  # again: never raises
    with pytest.raises(trio.ClosedResourceError):
        if transport.receive_nowait(10) is None:
            await transport.wait_readable()
    with pytest.raises(trio.ClosedResourceError):
        if transport.send_nowait(b"x") == 0:
            await transport.wait_writable()


async def test_a_reset_is_broken_resource_error_and_aclose_still_works(resettable: Pair) -> None:
    assert resettable.reset is not None
    await resettable.reset()
    with pytest.raises(trio.BrokenResourceError):
        await receive(resettable.transport)
    await resettable.transport.aclose()


async def test_a_reset_breaks_sending_too(resettable: Pair) -> None:
    assert resettable.reset is not None
    await resettable.reset()
    with pytest.raises(trio.BrokenResourceError), trio.fail_after(PATIENCE):
        while True:  # a send may still be taken until the reset is seen
            await send(resettable.transport, b"x" * 65536)


# -- SocketTransport -----------------------------------------------------------------------------


@pytest.fixture(params=["unix", "tcp"])
def sockets(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair of non-blocking sockets: a Unix socketpair, or TCP on loopback."""
    ours, theirs = socket.socketpair() if request.param == "unix" else tcp_socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


def fill(transport: Transport) -> int:
    """Send until the socket buffers are full; how many bytes they took."""
    total = 0
    chunk = b"x" * 65536
    while sent := transport.send_nowait(chunk):
        total += sent
    return total


async def test_send_nowait_is_partial_on_a_full_buffer_then_wait_writable_waits(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = sockets
    transport = SocketTransport(ours)
    taken = fill(transport)
    assert taken > 0
    assert transport.send_nowait(b"more") == 0  # full: nothing taken, nothing raised
    writable = trio.Event()

    async def wait() -> None:
        await transport.wait_writable()
        writable.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert not writable.is_set()
        peer = trio_stream(theirs)
        received = 0
        with trio.fail_after(PATIENCE):
            while not writable.is_set():  # the peer reads; room opens
                received += len(await peer.receive_some(65536))
    assert 0 < received <= taken
    assert transport.send_nowait(b"more") == 4


async def test_a_partial_send_nowait_keeps_the_rest_for_send_all(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = sockets
    transport = SocketTransport(ours)
    data = bytes(range(256)) * 40000  # 10 MB: far more than the buffers take
    sent = transport.send_nowait(data)
    assert 0 < sent < len(data)
    peer = trio_stream(theirs)
    got = bytearray()
    async with trio.open_nursery() as nursery:

        async def peer_reads() -> None:
            got.extend(await peer_receive_to_eof(peer))

        nursery.start_soon(peer_reads)
        await transport.send_all(memoryview(data)[sent:], more=True)
        await transport.send_eof()
    assert got == data


async def test_send_eof_lets_the_peer_read_eof_while_we_still_read(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = sockets
    transport = SocketTransport(ours)
    await send(transport, b"bye")
    await transport.send_eof()
    peer = trio_stream(theirs)
    assert await peer_receive_to_eof(peer) == b"bye"
    await peer.send_all(b"still talking")  # half-closed: our reading side is open
    assert await receive(transport) == b"still talking"


def test_socket_transport_faces() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        transport = as_transport(ours)
        assert isinstance(transport, SocketTransport)
        assert transport.socket is ours
        assert transport.lingers  # TCP resets unread bytes: it lingers before closing


# -- StreamTransport and the kit's link ----------------------------------------------------------


async def test_stream_transport_faces() -> None:
    _, ours = trio.testing.memory_stream_pair()
    memory = as_transport(ours)
    assert isinstance(memory, StreamTransport)
    assert (memory.socket, memory.lingers) == (None, False)
    assert memory.send_nowait(b"x") == 0  # a memory stream has no send_nowait: all by send_all
    server, client = tcp_socketpair()
    stream = trio_stream(server)
    async with stream, trio_stream(client):
        tcp = as_transport(stream)
        assert isinstance(tcp, StreamTransport)
        assert tcp.socket is stream.socket and tcp.lingers
        tls = as_transport(trio.SSLStream(stream, ssl.create_default_context()))
        assert isinstance(tls, StreamTransport) and tls.lingers  # TCP under the TLS


async def test_the_kits_link_is_its_own_transport() -> None:
    _, server = open_link()
    assert as_transport(server) is server
    assert isinstance(server, LinkEnd)
    assert (server.socket, server.lingers) == (None, False)


async def test_a_link_takes_only_what_its_window_has_room_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _, server = open_link([StopReading(at=0.0, window=10)])
    assert server.send_nowait(b"x" * 25) == 10  # partial: the client reads nothing
    assert server.send_nowait(b"more") == 0
    with trio.move_on_after(5):
        await server.wait_writable()
        pytest.fail("wait_writable returned while the window was full")


# -- linger --------------------------------------------------------------------------------------


async def test_linger_returns_at_the_peers_eof(autojump_clock: trio.testing.MockClock) -> None:
    client, server = open_link()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(linger, server)
        with trio.fail_after(1):
            assert await client.receive_some() == b""  # linger shut our side first
        await trio.sleep(0.5)
        await client.send_all(b"pipelined past the end")
        await client.send_eof()
    assert trio.current_time() - start == pytest.approx(0.5, abs=1e-9)


async def test_linger_is_bounded_in_time(autojump_clock: trio.testing.MockClock) -> None:
    """A peer that never closes, dripping bytes: linger gives up after its timeout."""
    client, server = open_link()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def drip() -> None:
            while True:
                await client.send_all(b".")
                await trio.sleep(0.3)

        nursery.start_soon(drip)
        await linger(server)
        nursery.cancel_scope.cancel()
    assert trio.current_time() - start == pytest.approx(LINGER_TIMEOUT, abs=1e-9)


async def test_linger_is_bounded_in_bytes(autojump_clock: trio.testing.MockClock) -> None:
    """A peer that keeps sending: linger stops once it has discarded ``max_bytes``."""
    client, server = open_link()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def flood() -> None:
            while True:
                await client.send_all(b"x" * 100)
                await trio.sleep(0.1)

        nursery.start_soon(flood)
        await linger(server, seconds=60, max_bytes=1000)
        nursery.cancel_scope.cancel()
    # 100 bytes at 0.0, 0.1, ... 0.9: the tenth piece reaches the bound.
    assert trio.current_time() - start == pytest.approx(0.9, abs=1e-9)


async def test_linger_returns_at_once_on_a_reset(autojump_clock: trio.testing.MockClock) -> None:
    client, server = open_link()
    client.reset()
    start = trio.current_time()
    await linger(server)
    assert trio.current_time() == start


async def test_linger_on_a_real_socket_reads_to_the_peers_eof(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = sockets
    transport = SocketTransport(ours)
    peer = trio_stream(theirs)
    await peer.send_all(b"unread " * 10000)
    with trio.fail_after(PATIENCE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(linger, transport)
            assert await peer_receive_to_eof(peer) == b""  # our side was shut
            await peer.send_eof()
