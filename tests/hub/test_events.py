"""Connection events and application tasks on a real worker, in memory and virtual time."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trioserver.events import Events
from trioserver.framer import Packet
from trioserver.handlers import Context, default_router
from trioserver.handlers.router import Router
from trioserver.reasons import CloseReason, KickReason
from trioserver.testing import Reset, memory_config, serve_in_memory

CONFIG = memory_config(connection__flood_check=False)


def recording_router(log: list[tuple[float, str, Any]], *, use_async: bool) -> Router:
    router = default_router()
    if use_async:

        @router.on_connect
        async def connected(ctx: Context) -> None:
            await trio.sleep(1)
            log.append((trio.current_time(), "connect", ctx.user))

        @router.on_login
        async def logged_in(ctx: Context) -> None:
            await trio.sleep(1)
            log.append((trio.current_time(), "login", ctx.user))

        @router.on_close
        async def closed(ctx: Context, reason: object) -> None:
            await trio.sleep(1)
            log.append((trio.current_time(), "close", reason))

    else:
        router.on_connect(lambda ctx: log.append((trio.current_time(), "connect", ctx.user)))
        router.on_login(lambda ctx: log.append((trio.current_time(), "login", ctx.user)))
        router.on_close(lambda ctx, why: log.append((trio.current_time(), "close", why)))

    @router.route(100)
    def echo(ctx: Context, packet: Packet) -> None:
        log.append((trio.current_time(), "message", packet.body))
        ctx.reply(100, packet.body)

    return router


@pytest.mark.parametrize("use_async", [False, True], ids=["plain", "async"])
async def test_events_fire_once_in_order(autojump_clock: trio.abc.Clock, use_async: bool) -> None:
    log: list[tuple[float, str, Any]] = []
    async with serve_in_memory(CONFIG, recording_router(log, use_async=use_async)) as server:
        start = trio.current_time()
        client = await server.connect()
        await client.register("alice", "pw")
        await client.login("alice", "pw")
        assert (await client.request(100, b"hi")).body == b"hi"
        await client.aclose()
        await trio.sleep(5)
    step = 1 if use_async else 0
    assert [(round(t - start, 6), what, arg) for t, what, arg in log] == [
        (step, "connect", None),
        (2 * step, "login", "alice"),
        (2 * step, "message", b"hi"),
        (3 * step, "close", None),
    ]
    assert [what for _, what, _ in log].count("close") == 1


async def test_on_close_sees_every_way_out(autojump_clock: trio.abc.Clock) -> None:
    """EOF, a heartbeat kick, a reset, a handler's kick and the drain: once each."""
    closes: list[tuple[float, str, object]] = []
    router = default_router()
    router.on_close(lambda ctx, why: closes.append((trio.current_time(), ctx.state["name"], why)))
    router.on_connect(lambda ctx: ctx.state.setdefault("name", f"c{len(ctx.state)}"))

    @router.route(100)
    def name(ctx: Context, packet: Packet) -> None:
        ctx.state["name"] = packet.body.decode()
        if packet.body == b"kick":
            ctx.kick()
        else:
            ctx.reply(100)

    async with serve_in_memory(memory_config(), router) as server:
        start = trio.current_time()
        eof = await server.connect()
        await eof.request(100, b"eof")
        silent = await server.connect()
        await silent.request(100, b"silent")
        reset = await server.connect(faults=[Reset(at=5)])
        await reset.request(100, b"reset")
        kicked = await server.connect()
        await kicked.send(100, b"kick")
        drained = await server.connect()
        await drained.request(100, b"drained")
        await eof.aclose()
        await trio.sleep(60)  # the heartbeat deadline is 3 * 20 + 10 = 70 s
        await drained.ping()
        await trio.sleep(40)
        server.worker.stop()
        await trio.sleep(1)
    got = {name: (round(t - start, 6), why) for t, name, why in closes}
    assert len(closes) == 5
    assert got == {
        "eof": (0, None),
        "kick": (0, KickReason.APPLICATION),
        "reset": (5, CloseReason.PEER_GONE),
        "silent": (70, KickReason.HEARTBEAT),
        "drained": (100, CloseReason.DRAINED),
    }


async def test_a_raising_on_connect_closes_only_its_connection(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    closes: list[object] = []
    router = default_router()
    seen = 0

    @router.on_connect
    def maybe_fail(ctx: Context) -> None:
        nonlocal seen
        seen += 1
        if seen == 1:
            raise RuntimeError("on_connect bug")

    router.on_close(lambda ctx, why: closes.append(why))
    async with serve_in_memory(CONFIG, router) as server:
        first = await server.connect()
        assert await first.at_eof()
        second = await server.connect()
        await second.ping()
        assert server.worker.statistics().handler_errors == 1
    assert closes == [KickReason.HANDLER_ERROR, CloseReason.DRAINED]
    assert any("on_connect bug" in (r.exc_text or "") for r in caplog.records)


async def test_a_raising_on_close_is_logged_and_the_worker_goes_on(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    router = default_router()

    @router.on_close
    def broken(ctx: Context, reason: object) -> None:
        raise RuntimeError("on_close bug")

    async with serve_in_memory(CONFIG, router) as server:
        client = await server.connect()
        await client.ping()
        await client.aclose()
        await trio.sleep(1)
        other = await server.connect()
        await other.ping()
        assert server.worker.statistics().handler_errors == 1
        assert server.worker.statistics().kicks_by_reason == {}
    assert any("on_close bug" in (r.exc_text or "") for r in caplog.records)


async def test_async_on_close_runs_through_the_drain_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A connection cut by the drain deadline still gets its (shielded) on_close."""
    done: list[tuple[float, object]] = []
    router = default_router()

    @router.route(100)
    async def forever(ctx: Context, packet: Packet) -> None:
        await trio.sleep_forever()

    @router.on_close
    async def closed(ctx: Context, reason: object) -> None:
        await trio.sleep(2)
        done.append((trio.current_time(), reason))

    async with serve_in_memory(CONFIG.replace(server__drain_timeout=3), router) as server:
        start = trio.current_time()
        client = await server.connect()
        await client.send(100)
        await trio.sleep(1)
        server.worker.stop()
    assert [(round(t - start, 6), why) for t, why in done] == [(6, KickReason.DRAIN_TIMEOUT)]


async def test_worker_tasks_run_until_the_drain(autojump_clock: trio.abc.Clock) -> None:
    ticks: list[float] = []
    calls: list[str] = []
    router = default_router()

    @router.on_worker_start
    def setup(worker: Any) -> None:
        calls.append(f"setup {worker.index}")

    @router.on_worker_start
    async def tick(worker: Any) -> None:
        try:
            while True:
                await trio.sleep(1)
                ticks.append(trio.current_time())
        finally:
            calls.append("tick cancelled")

    @router.on_worker_start
    async def crashes(worker: Any) -> None:
        await trio.sleep(0.5)
        raise RuntimeError("task bug")

    async with serve_in_memory(CONFIG, router) as server:
        start = trio.current_time()
        await trio.sleep(3.5)
        assert server.worker.statistics().handler_errors == 1
        server.worker.stop()
        await trio.sleep(10)
        assert server.worker.stopping
    assert [round(t - start, 6) for t in ticks] == [1, 2, 3]
    assert calls == ["setup 0", "tick cancelled"]


def test_router_rejects_event_handlers_that_are_not_callable() -> None:
    router = default_router()
    with pytest.raises(TypeError, match="on_close handler must be callable"):
        router.on_close(42)  # type: ignore[arg-type]
    assert isinstance(Events, type)
