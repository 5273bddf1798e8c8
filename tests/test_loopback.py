"""The same worker on real loopback sockets (port 0), driven by the blocking client."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import pytest
import trio

from trioserver.client import BlockingClient, Client
from trioserver.config import Config
from trioserver.dispatch import Router
from trioserver.framer import PING, Packet, encode
from trioserver.handlers import Context, default_router
from trioserver.worker import Worker

from .conftest import make_config

T = TypeVar("T")


@asynccontextmanager
async def serve_loopback(
    config: Config | None = None, router: Router | None = None
) -> AsyncIterator[tuple[Worker, int]]:
    config = (config or make_config()).replace(server__listen=_listen())
    worker = Worker(config, router)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        try:
            yield worker, worker.addresses[0][1]
        finally:
            worker.stop()


def _listen() -> tuple[object, ...]:
    from trioserver.config import Address

    return (Address("127.0.0.1", 0),)


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


async def test_ping_register_shapes_over_loopback() -> None:
    router = default_router()

    @router.route(100)
    def echo(ctx: Context, packet: Packet) -> None:
        ctx.reply(100, packet.body)

    config = make_config(connection__flood_check=False)
    async with serve_loopback(config, router) as (worker, port):

        def session() -> None:
            with BlockingClient.connect("127.0.0.1", port) as client:
                assert client.ping() > 0
                client.send_raw(b"".join(encode(100, struct.pack(">I", i)) for i in range(1000)))
                for i in range(1000):
                    assert client.receive_packet() == Packet(100, struct.pack(">I", i))
                # dropped packets leave the connection usable
                client.send_raw(struct.pack(">HHI", 13, 100, 1) + b"hello")  # bad CRC
                client.send_raw(encode(4242))  # unknown code
                client.ping()
                # a bad length closes it
                client.send_raw(struct.pack(">HHI", 3, 0, 0))
                assert client.at_eof()

        await in_thread(session)
        stats = worker.statistics()
        assert stats.drops_by_reason == {"bad_crc": 1, "unknown_code": 1}
        assert stats.kicks_by_reason == {"bad_length": 1}


async def test_trio_client_over_loopback_and_many_connections() -> None:
    async with serve_loopback(make_config(connection__flood_check=False)) as (worker, port):

        async def one() -> None:
            async with await Client.connect("127.0.0.1", port) as client:
                await client.send_raw(PING * 10)
                for _ in range(10):
                    assert await client.receive_packet() == Packet(0)

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(one)
        assert worker.statistics().packets_by_code[0] == 500


async def test_half_close_over_loopback() -> None:
    async with serve_loopback(make_config(connection__flood_check=False)) as (_, port):

        def session() -> int:
            with BlockingClient.connect("127.0.0.1", port) as client:
                client.send_raw(PING * 100)
                client.shutdown_write()
                replies = 0
                while True:
                    try:
                        client.receive_packet()
                    except ConnectionError:
                        return replies
                    replies += 1

        assert await in_thread(session) == 100


async def test_reset_with_replies_queued_harms_nothing() -> None:
    router = default_router()
    router.add(100, lambda ctx, p: ctx.reply(100, bytes(20000)), name="big")
    config = make_config(
        connection__flood_check=False,
        connection__max_pending_replies=5000,
        connection__max_pending_bytes=64 * 1024 * 1024,
    )
    async with serve_loopback(config, router) as (worker, port):

        def attack() -> None:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(encode(100) * 1000)  # 20 MB of replies that will never be read
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST

        await in_thread(attack)

        def after() -> None:
            with BlockingClient.connect("127.0.0.1", port) as client:
                for _ in range(10):
                    client.ping()

        await in_thread(after)
        with trio.fail_after(10):
            while worker.statistics().connections_open:
                await trio.sleep(0.01)
        assert worker.statistics().kicks_by_reason == {}


async def test_worker_serves_http_beside_the_binary_protocol() -> None:
    from trioserver.config import Address

    config = make_config(
        server__listen=(Address("127.0.0.1", 0),),
        http__listen=(Address("127.0.0.1", 0),),
        server__max_connections=2,
        connection__recycle_delay=0,
    )
    worker = Worker(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        port = worker.addresses[0][1]
        http_port = worker.http_addresses[0][1]

        def get(path: str) -> tuple[int, bytes]:
            import http.client

            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                return response.status, response.read()
            finally:
                conn.close()

        status, body = await in_thread(lambda: get("/"))
        assert status == 200 and b"trioserver" in body
        assert (await in_thread(lambda: get("/missing")))[0] == 404

        with trio.fail_after(10):  # the server notices both HTTP clients closing
            await worker.wait_http_connections(0)
        assert worker.statistics().connections_open == 0
        # Both protocols share one pool: two binary connections fill it, HTTP gets 503.
        with (
            BlockingClient.connect("127.0.0.1", port) as a,
            BlockingClient.connect("127.0.0.1", port) as b,
        ):
            await in_thread(a.ping)
            await in_thread(b.ping)
            assert (await in_thread(lambda: get("/")))[0] == 503
        stats = worker.counters.http_by_status
        assert (stats[200], stats[404]) == (1, 1)
        assert worker.statistics().connections_refused == 1
        worker.stop()


def _reply_or_error(sock: socket.socket) -> str:
    """``packet <code>`` once a whole reply came, else what happened instead."""
    from trioserver.framer import FrameDecoder

    decoder = FrameDecoder(0xFFFF)
    try:
        with sock:
            sock.settimeout(10)
            while not isinstance(event := decoder.next_packet(), Packet):
                data = sock.recv(65536)
                if not data:
                    return "EOF"
                decoder.receive_data(data)
            return f"packet {event.code}"
    except OSError as exc:
        return type(exc).__name__


@pytest.mark.parametrize("take_queued", [True, False])
async def test_a_final_stop_answers_the_connections_still_in_the_accept_queue(
    take_queued: bool,
) -> None:
    """What the worker has not accepted yet is accepted and answered by a final stop;
    a plain stop leaves it queued, and closing the socket resets it (Linux)."""
    config = make_config(server__listen=_listen())
    worker = Worker(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        port = worker.addresses[0][1]
        # No checkpoint from here to stop(): the kernel queues these, the worker accepts none.
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
        for client in clients:
            client.sendall(PING)
        worker.stop(take_queued=take_queued)
        outcomes = await in_thread(lambda: [_reply_or_error(c) for c in clients])
    if take_queued:
        assert outcomes == ["packet 0"] * 20
        assert worker.statistics().connections_accepted == 20
    else:
        assert outcomes == ["ConnectionResetError"] * 20
        assert worker.statistics().connections_accepted == 0


async def test_the_network_cap_on_real_sockets() -> None:
    """The raw-socket path: over the cap, an accepted socket is closed at once (no task);
    closing one frees its count. Loopback is exempt by default, so the test clears that."""
    from .polling import wait_until

    config = make_config(
        server__max_connections_per_network=2,
        server__connection_cap_exempt=[],
        accounts__url="",
    )
    async with serve_loopback(config) as (worker, port):
        a = await in_thread(lambda: BlockingClient.connect("127.0.0.1", port))
        b = await in_thread(lambda: BlockingClient.connect("127.0.0.1", port))
        try:
            await in_thread(lambda: (a.request(0), b.request(0)))

            def over_the_cap() -> bytes:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                    return c.recv(1)  # EOF: closed at accept

            assert await in_thread(over_the_cap) == b""
            assert worker.statistics().network_refused == 1
            b.close()
            await wait_until(lambda: worker.caps.open.get("127.0.0.1/32") == 1)

            def after_a_close() -> Packet:
                with BlockingClient.connect("127.0.0.1", port) as d:
                    return d.request(0)

            assert (await in_thread(after_a_close)).code == 0
        finally:
            a.close()
            b.close()
