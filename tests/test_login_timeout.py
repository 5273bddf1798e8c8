"""The pre-login deadline in virtual time: a binary connection that does not log in
within ``connection.login_timeout`` is closed (kick ``login_timeout``), pings or not;
a login lifts it; routers without login and servers without accounts never apply it."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from trioserver.client import Client, ConnectionClosed
from trioserver.config import ConnectionSettings
from trioserver.handlers import Router, Services
from trioserver.handlers.ping import handle_ping
from trioserver.messages import MessageCode, ResultCode
from trioserver.testing import memory_config, serve_in_memory
from trioserver.timers import ConnectionRules

LOGIN_TIMEOUT = 5.0
HEARTBEAT = 70.0


async def closed_after(client: Client, start: float) -> float:
    assert await client.at_eof()
    return trio.current_time() - start


async def test_a_silent_client_is_closed_at_the_login_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serve_in_memory(memory_config(connection__login_timeout=LOGIN_TIMEOUT)) as server:
        start = trio.current_time()
        client = await server.connect()
        assert await closed_after(client, start) == LOGIN_TIMEOUT
        stats = server.worker.statistics()
        assert stats.kicks_by_reason == {"login_timeout": 1}


async def test_pinging_does_not_keep_a_client_that_never_logs_in(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serve_in_memory(memory_config(connection__login_timeout=LOGIN_TIMEOUT)) as server:
        start = trio.current_time()
        client = await server.connect()
        with pytest.raises(ConnectionClosed):
            while True:
                await client.ping()
                await trio.sleep(1.0)
        assert trio.current_time() - start == LOGIN_TIMEOUT
        assert server.worker.statistics().kicks_by_reason == {"login_timeout": 1}


async def test_a_login_lifts_the_deadline_and_counts_as_a_ping(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Logged in at 2 s and silent after: the heartbeat closes it 70 s after the login."""
    async with serve_in_memory(memory_config(connection__login_timeout=LOGIN_TIMEOUT)) as server:
        start = trio.current_time()
        client = await server.connect()
        await trio.sleep(1.0)
        assert (await client.register("alice", "secret")).result == ResultCode.OK
        await trio.sleep(1.0)
        logged_in_at = trio.current_time()
        assert (await client.login("alice", "secret")).result == ResultCode.OK
        assert await closed_after(client, logged_in_at) == HEARTBEAT
        assert trio.current_time() - start == 2.0 + HEARTBEAT
        assert server.worker.statistics().kicks_by_reason == {"heartbeat": 1}


async def test_a_wrong_password_does_not_lift_it(autojump_clock: trio.testing.MockClock) -> None:
    async with serve_in_memory(memory_config(connection__login_timeout=LOGIN_TIMEOUT)) as server:
        start = trio.current_time()
        client = await server.connect()
        assert (await client.login("nobody", "wrong")).result != ResultCode.OK
        assert await closed_after(client, start) == LOGIN_TIMEOUT


async def test_with_a_lifetime_the_login_gives_way_to_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = memory_config(
        connection__login_timeout=LOGIN_TIMEOUT,
        connection__session_lifetime=40.0,
        connection__heartbeat=False,
    )
    async with serve_in_memory(config) as server:
        start = trio.current_time()
        client = await server.connect()
        await client.register("bob", "secret")
        assert (await client.login("bob", "secret")).result == ResultCode.OK
        assert await closed_after(client, start) == 40.0
        assert server.worker.statistics().kicks_by_reason == {"lifetime": 1}


def ping_only_router() -> Router:
    router = Router()
    router.add(MessageCode.PING, handle_ping, name="ping")
    return router


async def test_a_router_without_login_never_applies_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = memory_config(connection__login_timeout=LOGIN_TIMEOUT)
    async with serve_in_memory(config, ping_only_router()) as server:
        assert server.worker.shared.rules.login_timeout == math.inf
        start = trio.current_time()
        client = await server.connect()
        assert await closed_after(client, start) == HEARTBEAT
        assert server.worker.statistics().kicks_by_reason == {"heartbeat": 1}


async def test_no_accounts_configured_never_applies_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = memory_config(connection__login_timeout=LOGIN_TIMEOUT, accounts__url="")
    async with serve_in_memory(config, services=Services(config=config)) as server:
        assert server.worker.shared.rules.login_timeout == math.inf
        start = trio.current_time()
        client = await server.connect()
        assert await closed_after(client, start) == HEARTBEAT


async def test_off_by_default(autojump_clock: trio.testing.MockClock) -> None:
    assert ConnectionSettings().login_timeout == 0.0
    async with serve_in_memory() as server:
        assert server.worker.shared.rules.login_timeout == math.inf
        start = trio.current_time()
        client = await server.connect()
        assert await closed_after(client, start) == HEARTBEAT


def test_the_rules_pure() -> None:
    """open / logged_in / deadline_reason without a connection: exact numbers."""

    class Conn:
        scope = trio.CancelScope()
        hard_deadline = math.inf
        prelogin = False
        last_packet_at = -math.inf
        flood_count = 0

    rules = ConnectionRules.from_settings(
        ConnectionSettings(login_timeout=5.0, session_lifetime=100.0), login=True
    )
    conn = Conn()
    rules.open(conn, 10.0)
    assert (conn.prelogin, conn.hard_deadline, conn.scope.deadline) == (True, 15.0, 15.0)
    assert rules.deadline_reason(conn).value == "login_timeout"
    rules.logged_in(conn, 12.0)
    assert (conn.prelogin, conn.hard_deadline, conn.scope.deadline) == (False, 110.0, 82.0)
    rules.logged_in(conn, 13.0)  # a second login moves nothing
    assert (conn.hard_deadline, conn.scope.deadline) == (110.0, 82.0)
    conn.scope.deadline = conn.hard_deadline
    assert rules.deadline_reason(conn).value == "lifetime"
    # Not served: the flag is never set and nothing changes.
    plain = ConnectionRules.from_settings(ConnectionSettings(login_timeout=5.0))
    other = Conn()
    other.scope = trio.CancelScope()
    plain.open(other, 10.0)
    assert (other.prelogin, other.hard_deadline, other.scope.deadline) == (False, math.inf, 80.0)
