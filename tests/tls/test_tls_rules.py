"""Every connection rule works the same over TLS (in memory, virtual time)."""

from __future__ import annotations

import ssl

import pytest
import trio
import trio.testing
import trustme

from trioserver.client import Client
from trioserver.dispatch import Router
from trioserver.framer import PING, Packet, encode
from trioserver.handlers import Context, default_router
from trioserver.testing import InMemoryServer, StopReading, serve_in_memory

from ..proxy.headers import v1
from .conftest import Pki

HEARTBEAT = 3 * 20.0 + 10
WHO = 200  # replies with ctx.peer and the client certificate's common name


def who_router() -> Router:
    router = default_router()

    def who(ctx: Context, packet: Packet) -> None:
        cert = ctx.peer_certificate
        name = cert.common_name if cert is not None else None
        ctx.reply(WHO, f"{ctx.peer} {name}".encode())

    router.add(WHO, who)
    return router


async def test_heartbeat_closes_a_silent_tls_client_at_3w_plus_10(
    pki: Pki, autojump_clock: trio.testing.MockClock
) -> None:
    async with serve_in_memory(pki.config()) as server:
        client = await server.connect(tls=pki.client_context())
        start = trio.current_time()
        assert await client.at_eof()
        assert trio.current_time() - start == pytest.approx(HEARTBEAT, abs=1e-9)
        assert server.worker.statistics().kicks_by_reason == {"heartbeat": 1}


async def test_flood_over_tls_answers_ten_then_closes(
    pki: Pki, autojump_clock: trio.testing.MockClock
) -> None:
    async with serve_in_memory(pki.config()) as server:
        client = await server.connect(tls=pki.client_context())
        await client.send_raw(PING * 11)
        for _ in range(10):
            assert await client.receive_packet() == Packet(0)
        # A clean TLS end (close_notify: a ragged one would raise) after the replies.
        assert await client.stream.receive_some(100) == b""
        await client.aclose()  # the server lingers until the client's own end
        await trio.testing.wait_all_tasks_blocked()
        assert server.worker.statistics().kicks_by_reason == {"flood": 1}


async def test_a_tls_client_that_never_reads_is_kicked(
    pki: Pki, autojump_clock: trio.testing.MockClock
) -> None:
    config = pki.config(connection__flood_check=False)
    async with serve_in_memory(config) as server:
        attacker = await server.connect(
            tls=pki.client_context(), faults=[StopReading(at=1.0, window=4096)]
        )
        await trio.sleep(2)
        victim = await server.connect(tls=pki.client_context())
        with pytest.raises(trio.BrokenResourceError):
            for _ in range(1000):
                await attacker.send_raw(PING * 50)
                await victim.ping()
                # 400 for the attacker, and the victim's reply (TLS sends from a task).
                assert server.worker.statistics().outbox_replies <= 401
        assert server.worker.statistics().kicks_by_reason == {"send_queue": 1}
        await victim.ping()


async def test_max_connections_counts_tls_connections(
    pki: Pki, autojump_clock: trio.testing.MockClock
) -> None:
    async with serve_in_memory(pki.config(server__max_connections=1)) as server:
        first = await server.connect(tls=pki.client_context())
        raw = await server.connect_stream(tls_port=True)
        assert await raw.receive_some(100) == b""  # refused before any handshake
        assert server.worker.statistics().connections_refused == 1
        await first.ping()


async def test_drain_closes_an_idle_tls_connection_at_once(
    pki: Pki, autojump_clock: trio.testing.MockClock
) -> None:
    async with serve_in_memory(pki.config()) as server:
        client = await server.connect(tls=pki.client_context())
        await client.ping()
        start = trio.current_time()
        server.worker.stop()
        assert await client.at_eof()
        assert trio.current_time() == start
        assert server.worker.statistics().kicks_by_reason == {}


async def test_drain_answers_what_a_tls_client_sent(
    pki: Pki, autojump_clock: trio.testing.MockClock
) -> None:
    async with serve_in_memory(pki.config(connection__flood_check=False)) as server:
        client = await server.connect(tls=pki.client_context())
        await client.send_raw(PING * 5)
        await trio.testing.wait_all_tasks_blocked()
        server.worker.stop()
        for _ in range(5):
            assert await client.receive_packet() == Packet(0)
        assert await client.at_eof()


async def test_proxy_header_comes_before_the_handshake(
    pki: Pki, autojump_clock: trio.testing.MockClock
) -> None:
    config = pki.config(server__proxy_protocol="v1")
    async with serve_in_memory(config, who_router()) as server:
        client = await server.connect(
            tls=pki.client_context(), peer="127.0.0.1:51000", proxy_header=v1("203.0.113.9", 4242)
        )
        assert (await client.request(WHO)).body == b"203.0.113.9:4242 None"


async def test_a_client_certificate_is_verified_and_reaches_handlers(
    pki: Pki, autojump_clock: trio.testing.MockClock
) -> None:
    config = pki.config(tls__client_ca=pki.ca_file)
    async with serve_in_memory(config, who_router()) as server:
        context = pki.client_context()
        pki.ca.issue_cert("device-17", common_name="device-17").configure_cert(context)
        client = await server.connect(tls=context, peer="10.0.0.7:5000")
        assert (await client.request(WHO)).body == b"10.0.0.7:5000 device-17"


@pytest.mark.parametrize("who", ["none", "other-ca"])
async def test_a_missing_or_untrusted_client_certificate_is_refused(
    pki: Pki, who: str, autojump_clock: trio.testing.MockClock
) -> None:
    config = pki.config(tls__client_ca=pki.ca_file)
    async with serve_in_memory(config) as server:
        context = pki.client_context()
        if who == "other-ca":
            trustme.CA().issue_cert("intruder", common_name="intruder").configure_cert(context)
        # TLS 1.3: the client's side of the handshake ends first; the refusal
        # arrives as an alert on its first read.
        client = Client(await _handshaken(server, context))
        with pytest.raises(trio.BrokenResourceError):
            await client.stream.send_all(PING)
            await client.stream.receive_some(100)
        stats = server.worker.statistics()
        assert stats.tls_failures_by_reason == {"client_certificate": 1}
        assert stats.tls_handshakes == 0
        assert stats.connections_open == 0


async def _handshaken(
    server: InMemoryServer, context: ssl.SSLContext
) -> trio.SSLStream[trio.abc.Stream]:
    """A client whose own side of the handshake is done (the server may still refuse)."""
    stream = trio.SSLStream(
        await server.connect_stream(tls_port=True), context, server_hostname="localhost"
    )
    await stream.do_handshake()
    return stream


async def test_replies_over_tls_leave_in_order_whatever_path_they_take(
    pki: Pki, autojump_clock: trio.testing.MockClock
) -> None:
    """Plain and async handlers' replies, small and large: the sender's queue, the
    outbox's writer once that queue is full, and the deferred flusher all keep order."""
    router = default_router()
    router.add(100, lambda ctx, p: ctx.reply(100, p.body * 300), name="echo")

    async def slow_echo(ctx: Context, packet: Packet) -> None:
        await trio.sleep(0)
        ctx.reply(101, packet.body * 50)

    router.add(101, slow_echo, name="slow")
    config = pki.config(
        connection__flood_check=False,
        connection__max_pending_replies=4000,
        connection__max_pending_bytes=16 << 20,
    )
    async with serve_in_memory(config, router) as server:
        client = await server.connect(tls=pki.client_context())
        sent = [(100 + i % 2, f"{i:06d}".encode()) for i in range(600)]
        await client.send_raw(b"".join(encode(code, body) for code, body in sent))
        for code, body in sent:
            reply = await client.receive_packet()
            assert (reply.code, reply.body) == (code, body * (300 if code == 100 else 50))
        assert server.worker.statistics().kicks_by_reason == {}


async def test_replies_larger_than_the_window_wait_for_room_and_keep_order(
    pki: Pki, autojump_clock: trio.testing.MockClock
) -> None:
    """A 4 KiB window (a slow reader): each large reply's ciphertext goes partly now and
    the rest from the flusher, while later replies wait their turn in the outbox."""
    router = default_router()
    router.add(100, lambda ctx, p: ctx.reply(100, p.body * 4000), name="big")
    router.add(101, lambda ctx, p: ctx.reply(101, p.body), name="small")
    config = pki.config(connection__flood_check=False, connection__max_pending_replies=1000)
    async with serve_in_memory(config, router) as server:
        client = await server.connect(
            tls=pki.client_context(), faults=[StopReading(at=1e6, window=4096)]
        )
        sent = [(100 + i % 2, f"{i:06d}".encode()) for i in range(60)]
        await client.send_raw(b"".join(encode(code, body) for code, body in sent))
        for code, body in sent:
            reply = await client.receive_packet()
            assert (reply.code, reply.body) == (code, body * (4000 if code == 100 else 1))
        assert await client.ping() == 0
        assert server.worker.statistics().kicks_by_reason == {}
