"""A worker's per-network connection caps, in memory: binary, PROXY, HTTP and the
shared count across listeners; refusals counted by reason and logged."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trioserver.client import Client, ConnectionClosed
from trioserver.testing import memory_config, serve_in_memory
from trioserver.worker import Worker

from .http.conftest import docroot, memory_worker, parse_responses, raw_request, read_to_eof
from .proxy.headers import v1

__all__ = ["docroot"]  # the HTTP tests' document root, as a fixture here too


async def served(client: Client) -> bool:
    """True when the server answers a ping (False: it closed the connection)."""
    try:
        await client.ping()
    except (ConnectionClosed, trio.BrokenResourceError):
        return False
    return True


async def test_one_network_gets_its_cap_and_no_more(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "trioserver.worker")
    config = memory_config(server__max_connections_per_network=3)
    async with serve_in_memory(config) as server:
        held = [await server.connect(peer=f"10.0.0.1:{5000 + i}") for i in range(3)]
        for client in held:
            assert await served(client)
        extra = await server.connect(peer="10.0.0.1:6000")
        assert await extra.at_eof()  # closed at once, nothing read
        other = await server.connect(peer="10.0.0.2:5000")
        assert await served(other)
        stats = server.worker.statistics()
        assert (stats.network_refused, stats.connections_refused) == (1, 0)
        assert stats.connections_accepted == 4
        assert server.worker.caps.open == {"10.0.0.1/32": 3, "10.0.0.2/32": 1}
        await held[0].aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert server.worker.caps.open["10.0.0.1/32"] == 2  # released exactly once
        again = await server.connect(peer="10.0.0.1:6001")
        assert await served(again)
    assert "refused 10.0.0.1:6000: its network 10.0.0.1/32 holds 3 connections" in caplog.text


async def test_an_ipv6_slash_64_is_one_network(autojump_clock: trio.testing.MockClock) -> None:
    config = memory_config(server__max_connections_per_network=2)
    async with serve_in_memory(config) as server:
        a = await server.connect(peer="[2001:db8:0:1::1]:5000")
        b = await server.connect(peer="[2001:db8:0:1::2]:5000")
        c = await server.connect(peer="[2001:db8:0:1:abcd::3]:5000")
        d = await server.connect(peer="[2001:db8:0:2::1]:5000")
        assert [await served(x) for x in (a, b, d)] == [True, True, True]
        assert await c.at_eof()
        assert server.worker.statistics().network_refused == 1


async def test_every_connection_closed_leaves_nothing_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Closed by the peer, by a kick, or by the heartbeat: each releases its count."""
    config = memory_config(server__max_connections_per_network=10)
    async with serve_in_memory(config) as server:
        polite = await server.connect(peer="10.0.0.1:1")
        assert await served(polite)
        await polite.aclose()
        garbage = await server.connect(peer="10.0.0.1:2")
        await garbage.send_raw(b"\xff" * 8)  # a pkgLen out of range: kicked
        assert await garbage.at_eof()
        silent = await server.connect(peer="10.0.0.1:3")
        assert await silent.at_eof()  # the heartbeat closes it at 70 s
        await trio.testing.wait_all_tasks_blocked()
        assert server.worker.caps.open == {}
        assert server.worker.caps.held == 0


async def test_zero_turns_the_cap_off(autojump_clock: trio.testing.MockClock) -> None:
    config = memory_config(server__max_connections_per_network=0)
    async with serve_in_memory(config) as server:
        clients = [await server.connect(peer=f"10.0.0.1:{i}") for i in range(20)]
        assert all([await served(c) for c in clients])
        assert server.worker.shared.caps is None


async def test_loopback_is_exempt_by_default(autojump_clock: trio.testing.MockClock) -> None:
    config = memory_config(server__max_connections_per_network=1)
    async with serve_in_memory(config) as server:
        clients = [await server.connect(peer=f"127.0.0.1:{5000 + i}") for i in range(3)]
        assert all([await served(c) for c in clients])
        assert server.worker.caps.open == {}


# -- behind a PROXY header -----------------------------------------------------------


async def test_behind_proxy_the_headers_client_is_counted_not_the_balancer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The balancer (trusted, not exempt) carries many clients: it is never the key;
    each client's network is counted once its header is read."""
    config = memory_config(
        server__proxy_protocol="v1",
        server__proxy_trusted=["192.0.2.0/24"],
        server__max_connections_per_network=2,
    )
    async with serve_in_memory(config) as server:

        async def via_balancer(client_ip: str, port: int) -> Client:
            client = await server.connect(peer=f"192.0.2.10:{port}")
            await client.send_raw(v1(client_ip, port))
            return client

        first = [await via_balancer("10.0.0.1", 4000 + i) for i in range(2)]
        others = [await via_balancer(f"10.0.1.{i}", 4100 + i) for i in range(3)]
        over = await via_balancer("10.0.0.1", 4999)
        assert all([await served(c) for c in first + others])
        assert await over.at_eof()
        stats = server.worker.statistics()
        assert stats.network_refused == 1 and stats.proxy_refused == 0
        assert "192.0.2.10/32" not in server.worker.caps.open
        assert server.worker.caps.open["10.0.0.1/32"] == 2
        await first[0].aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert server.worker.caps.open["10.0.0.1/32"] == 1


async def test_a_connection_refused_for_its_proxy_header_holds_no_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = memory_config(server__proxy_protocol="v1", server__max_connections_per_network=2)
    async with serve_in_memory(config) as server:
        bad = await server.connect(peer="127.0.0.1:4000")
        await bad.send_raw(b"GET / HTTP/1.1\r\n\r\n")
        assert await bad.at_eof()
        assert server.worker.statistics().proxy_refused == 1
        assert server.worker.caps.open == {}


# -- HTTP shares the count with the binary listeners ---------------------------------


@asynccontextmanager
async def both_worker(docroot: Path, **settings: Any) -> AsyncIterator[tuple[Worker, Any, Any]]:
    config = memory_config(http__document_root=docroot, http__keep_alive_timeout=300.0, **settings)
    async with memory_worker(config) as started:
        yield started


async def test_idle_http_connections_count_against_binary_ones(
    docroot: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """One host's idle keep-alive connections cannot take the slots its cap does not
    give it; an HTTP connection over the cap gets a 503, a binary one a close."""
    async with both_worker(docroot, server__max_connections_per_network=2) as (w, binary, http):
        idle = [await http.connect(peer=f"10.0.0.1:{7000 + i}") for i in range(2)]
        await trio.testing.wait_all_tasks_blocked()
        assert w.http_connection_count == 2
        over = await http.connect(peer="10.0.0.1:7100")
        [response] = parse_responses(await read_to_eof(over))
        assert response.status == 503
        refused = Client(await binary.connect(peer="10.0.0.1:7200"))
        assert await refused.at_eof()
        elsewhere = Client(await binary.connect(peer="10.0.0.2:7200"))
        assert await served(elsewhere)
        assert w.statistics().network_refused == 2
        await idle[0].aclose()
        await w.wait_http_connections(1)
        admitted = Client(await binary.connect(peer="10.0.0.1:7300"))
        assert await served(admitted)
        await idle[1].send_all(raw_request("/a.txt"))
        assert w.caps.open == {"10.0.0.1/32": 2, "10.0.0.2/32": 1}
