"""A worker with PROXY on: the header's client is ``ctx.peer``, logs and rate-limit key;
bad, missing, slow or untrusted headers close the connection (counted). In memory first
(virtual time), then a few cases on real loopback sockets (the worker's raw-socket path)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from typing import Any

import pytest
import trio

from trioserver.client import Client
from trioserver.config import Config, parse_address
from trioserver.dispatch import Router
from trioserver.framer import PING, Packet, encode
from trioserver.handlers import Context, default_router
from trioserver.messages import ResultCode
from trioserver.testing import memory_config, serve_in_memory
from trioserver.worker import Worker

from .headers import V2_LOCAL, v1, v2_inet

WHO = 200  # replies with ctx.peer


def peer_router() -> Router:
    router = default_router()

    def who(ctx: Context, packet: Packet) -> None:
        ctx.reply(WHO, str(ctx.peer).encode())

    router.add(WHO, who)
    return router


def networks(*texts: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


def proxy_config(mode: str = "any", **settings: Any) -> Config:
    return memory_config(server__proxy_protocol=mode, **settings)


BALANCER = "127.0.0.1:51000"  # the socket peer every proxied memory connection has


async def test_off_by_default_and_no_header_needed() -> None:
    assert Config().server.proxy_protocol == "off"
    async with serve_in_memory(memory_config(), peer_router()) as server:
        client = await server.connect(peer=BALANCER)
        assert (await client.request(WHO)).body == BALANCER.encode()


@pytest.mark.parametrize(
    ("mode", "header", "client"),
    [
        ("v1", v1("203.0.113.7", 40001), "203.0.113.7:40001"),
        ("v2", v2_inet("203.0.113.7", 40001, "127.0.0.1", 10000), "203.0.113.7:40001"),
        ("any", v1("2001:db8::7", 40002), "[2001:db8::7]:40002"),
        ("any", v2_inet("198.51.100.2", 1, "127.0.0.1", 10000), "198.51.100.2:1"),
        ("v2", V2_LOCAL, BALANCER),  # the balancer's own health check keeps its address
    ],
)
async def test_header_names_the_peer_and_the_request_in_the_same_send_is_answered(
    mode: str, header: bytes, client: str
) -> None:
    async with serve_in_memory(proxy_config(mode), peer_router()) as server:
        conn = await server.connect(peer=BALANCER)
        await conn.send_raw(header + encode(WHO) + PING)  # one segment, as HAProxy may send
        assert (await conn.receive_packet()).body == client.encode()
        assert (await conn.receive_packet()).code == 0
        assert server.worker.counters.proxy_refused == 0
        assert [str(c.peer) for c in server.worker.connections()] == [client]


async def test_header_and_request_split_byte_by_byte() -> None:
    async with serve_in_memory(proxy_config("v2"), peer_router()) as server:
        conn = await server.connect(peer=BALANCER)
        wire = v2_inet("192.0.2.1", 7, "127.0.0.1", 10000) + encode(WHO)
        for i in range(len(wire)):
            await conn.send_raw(wire[i : i + 1])
            await trio.testing.wait_all_tasks_blocked()
        assert (await conn.receive_packet()).body == b"192.0.2.1:7"


REFUSALS = [
    ("missing", "any", BALANCER, PING, "not a PROXY header"),
    ("wrong version", "v1", BALANCER, v2_inet("1.2.3.4", 1, "5.6.7.8", 2), "accepts PROXY v1"),
    ("malformed", "v1", BALANCER, b"PROXY TCP4 1.2.3.4 nowhere 1 2\r\n", "not inet"),
    ("untrusted", "any", "192.0.2.66:4000", v1("1.2.3.4", 1), "not a trusted PROXY source"),
    ("untrusted, not an IP", "any", "memory:7", v1("1.2.3.4", 1), "not a trusted PROXY source"),
]


@pytest.mark.parametrize(
    ("name", "mode", "peer", "wire", "why"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
async def test_refused_connections_close_counted_and_logged(
    name: str, mode: str, peer: str, wire: bytes, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioserver")
    async with serve_in_memory(proxy_config(mode), peer_router()) as server:
        conn = await server.connect(peer=peer)
        await conn.send_raw(wire + PING)
        assert await conn.at_eof()  # closed, and nothing answered
        assert server.worker.counters.proxy_refused == 1
        assert not server.worker.statistics().kicks_by_reason  # a refusal, not a kick
    (line,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert line.startswith(f"refused {peer} (conn ")
    assert why in line


async def test_untrusted_source_is_refused_before_anything_is_read() -> None:
    async with serve_in_memory(proxy_config(), peer_router()) as server:
        conn = await server.connect(peer="10.1.2.3:999")  # sends nothing at all
        assert await conn.at_eof()
        assert server.worker.counters.proxy_refused == 1


async def test_trusted_networks_are_configurable() -> None:
    config = proxy_config(server__proxy_trusted=networks("10.0.0.0/8", "fd00::/8"))
    async with serve_in_memory(config, peer_router()) as server:
        for balancer in ("10.200.0.1:5", "[fd00::1]:5"):
            conn = await server.connect(peer=balancer)
            await conn.send_raw(v1("192.0.2.5", 5) + encode(WHO))
            assert (await conn.receive_packet()).body == b"192.0.2.5:5"
        loopback = await server.connect(peer=BALANCER)  # no longer trusted
        assert await loopback.at_eof()
        assert server.worker.counters.proxy_refused == 1


async def test_a_silent_or_slow_header_is_closed_at_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serve_in_memory(proxy_config(server__proxy_timeout=3.0), peer_router()) as server:
        start = trio.current_time()
        silent = await server.connect(peer=BALANCER)
        assert await silent.at_eof()
        assert trio.current_time() - start == pytest.approx(3.0)
        start = trio.current_time()
        dripping = await server.connect(peer=BALANCER)
        with pytest.raises(trio.BrokenResourceError):
            for byte in v1("1.2.3.4", 5):
                await dripping.send_raw(bytes([byte]))
                await trio.sleep(0.5)  # 5 s for the whole header: too slow
        assert await dripping.at_eof()
        assert trio.current_time() - start == pytest.approx(3.0, abs=0.5)
        assert server.worker.counters.proxy_refused == 2


async def test_eof_inside_the_header_is_a_refusal() -> None:
    async with serve_in_memory(proxy_config(), peer_router()) as server:
        conn = await server.connect(peer=BALANCER)
        await conn.send_raw(b"PROXY TCP4 1.2")
        await conn.stream.send_eof()  # type: ignore[attr-defined]
        assert await conn.at_eof()
        assert server.worker.counters.proxy_refused == 1


async def test_rate_limits_are_keyed_by_the_real_client() -> None:
    """Two clients behind one balancer do not share an address bucket."""
    config = proxy_config(accounts__max_registrations_per_address=1)
    async with serve_in_memory(config) as server:

        async def client(address: str, port: int) -> Client:
            conn = await server.connect(peer=BALANCER)
            await conn.send_raw(v1(address, port))
            return conn

        first = await client("192.0.2.1", 1000)
        assert (await first.register("alice", "secret")).result == ResultCode.OK
        other = await client("192.0.2.2", 1000)
        assert (await other.register("bob", "secret")).result == ResultCode.OK
        again = await client("192.0.2.1", 1001)  # same client, new port: same bucket
        assert (await again.register("carol", "secret")).result == ResultCode.RATE_LIMITED


async def test_a_drain_closes_connections_still_waiting_for_a_header_after_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serve_in_memory(proxy_config(server__proxy_timeout=60.0), peer_router()) as server:
        conn = await server.connect(peer=BALANCER)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        server.worker.stop()
        assert await conn.at_eof()
        # after the drain's first-request grace (1 s), not after the 60 s PROXY timeout
        assert trio.current_time() - start == pytest.approx(1.0)
        assert server.worker.counters.proxy_refused == 0  # drained, not refused


# -- real loopback sockets: the worker's raw-socket path ----------------------------------


def _exchange(port: int, *sends: bytes, pause: float = 0.0) -> bytes | None:
    """Send each piece (pausing between), half-close, read until the server closes;
    None when the server reset it (it closed without reading what we sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        out = b""
        try:
            for piece in sends:
                sock.sendall(piece)
                time.sleep(pause)
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                out += chunk
        except OSError:  # reset, broken pipe, or not connected any more at shutdown
            return None
        return out


@pytest.mark.parametrize("trusted", [["127.0.0.1/32"], ["10.0.0.0/8"]])
async def test_raw_sockets_on_loopback(trusted: list[str]) -> None:
    config = proxy_config(
        server__listen=(parse_address("127.0.0.1:0"),),
        server__proxy_trusted=networks(*trusted),
        connection__flood_check=False,
    )
    worker = Worker(config, peer_router())
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        port = worker.addresses[0][1]
        together = v2_inet("198.51.100.9", 4242, "127.0.0.1", port) + encode(WHO) + PING
        split = (v1("2001:db8::9", 4243)[:9], v1("2001:db8::9", 4243)[9:] + encode(WHO))
        one = await trio.to_thread.run_sync(_exchange, port, together)
        two = await trio.to_thread.run_sync(lambda: _exchange(port, *split, pause=0.05))
        worker.stop()
    if trusted == ["127.0.0.1/32"]:
        assert one == encode(WHO, b"198.51.100.9:4242") + PING
        assert two == encode(WHO, b"[2001:db8::9]:4243")
        assert worker.counters.proxy_refused == 0
    else:
        assert one in (b"", None) and two in (b"", None)
        assert worker.counters.proxy_refused == 2


async def test_the_kits_connect_sends_proxy_header_on_a_plaintext_connection() -> None:
    async with serve_in_memory(proxy_config("v1"), peer_router()) as server:
        client = await server.connect(peer=BALANCER, proxy_header=v1("192.0.2.7", 4242))
        assert (await client.request(WHO)).body == b"192.0.2.7:4242"
