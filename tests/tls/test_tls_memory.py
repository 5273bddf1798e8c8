"""TLS in memory and virtual time: the worker's own handshake over simulated links."""

from __future__ import annotations

import logging

import pytest
import trio

from trioserver.framer import PING
from trioserver.messages import ResultCode
from trioserver.testing import serve_in_memory

from .conftest import Pki


async def test_ping_register_login_over_tls(pki: Pki, autojump_clock: trio.abc.Clock) -> None:
    async with serve_in_memory(pki.config(), tls=pki.server_tls()) as server:
        client = await server.connect(tls=pki.client_context())
        assert await client.ping() == 0
        assert (await client.register("alice", "secret")).result == ResultCode.OK
        assert (await client.login("alice", "secret")).result == ResultCode.OK
        assert server.worker.statistics().tls_handshakes == 1


async def test_plaintext_on_tls_port_is_counted_without_traceback(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serve_in_memory(pki.config(), tls=pki.server_tls()) as server:
        raw = await server.connect_stream(tls_port=True)
        await raw.send_all(PING)
        assert await raw.receive_some(1024) == b""
        stats = server.worker.statistics()
        assert stats.tls_failures_by_reason == {"not_tls": 1}
        assert stats.connections_open == 0
    assert not [r for r in caplog.records if r.exc_info]
    assert any("sent something other than TLS" in r.getMessage() for r in caplog.records)


async def test_handshake_deadline(pki: Pki, autojump_clock: trio.abc.Clock) -> None:
    async with serve_in_memory(pki.config(tls__handshake_timeout=3.0), tls=None) as server:
        raw = await server.connect_stream(tls_port=True)
        start = trio.current_time()
        assert await raw.receive_some(1024) == b""
        assert trio.current_time() - start == 3.0
        assert server.worker.statistics().tls_failures_by_reason == {"timeout": 1}


async def test_the_tls_port_shares_the_network_cap(
    pki: Pki, autojump_clock: trio.abc.Clock
) -> None:
    """Counted at accept, before the handshake: one over the cap never costs one."""
    config = pki.config(server__max_connections_per_network=2)
    async with serve_in_memory(config, tls=pki.server_tls()) as server:
        secure = await server.connect(tls=pki.client_context(), peer="10.0.0.1:5000")
        plain = await server.connect(peer="10.0.0.1:5001")
        assert await secure.ping() == 0 and await plain.ping() == 0
        over = await server.connect_stream(tls_port=True, peer="10.0.0.1:5002")
        assert await over.receive_some(1024) == b""
        stats = server.worker.statistics()
        assert (stats.network_refused, stats.tls_handshakes) == (1, 1)
        assert server.worker.caps.open == {"10.0.0.1/32": 2}
