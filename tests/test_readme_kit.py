"""The README's "Testing your handlers" page, followed as a user would (nothing else read)."""

import pytest
import trio

import trioserver
from trioserver.testing import (
    Delay,
    FaultPlan,
    Reset,
    Split,
    StopReading,
    run_swarm,
    serve_in_memory,
)


@pytest.fixture
def trioserver_router():
    router = trioserver.default_router()
    router.add(100, lambda ctx, packet: ctx.reply(100, packet.body.upper()))
    return router


async def test_shout(trioserver_client, autojump_clock):
    assert (await trioserver_client.request(100, b"hi")).body == b"HI"


async def test_more_clients_and_statistics(trioserver_server, trioserver_client, autojump_clock):
    other = await trioserver_server.connect(faults=[Split((1,)), Delay(0.2)])
    assert (await other.request(100, b"abc")).body == b"ABC"
    assert trio.current_time() == pytest.approx(0.4)  # 0.2 s each way
    await trioserver_client.ping()
    assert trioserver_server.worker.statistics().packets_by_code == {100: 1, 0: 1}


async def test_silent_client_is_closed_at_70_s(autojump_clock):
    async with serve_in_memory() as server:
        client = await server.connect()
        assert await client.at_eof()
        assert trio.current_time() == 70
        assert server.worker.statistics().kicks_by_reason == {"heartbeat": 1}


async def test_faults_end_connections(autojump_clock):
    async with serve_in_memory() as server:
        reset = await server.connect(faults=[Reset(at=30)])
        with pytest.raises(Exception):  # noqa: B017 - the page says "next operations fail"
            await reset.receive_packet()
        assert trio.current_time() == 30
        stalled = await server.connect(faults=[StopReading(at=0)])
        assert await stalled.at_eof()  # it never reads, so never pings: closed at 30 + 70
        assert trio.current_time() == 100


async def script(bot):
    await bot.sleep(bot.random.uniform(0, 20))
    assert await bot.register() == 0 and await bot.login() == 0
    while True:
        await bot.ping()
        await bot.sleep(20)


async def test_swarm(autojump_clock):
    async def once():
        async with serve_in_memory() as server:
            return await run_swarm(
                server, script, bots=50, duration=600, faults=FaultPlan.random(seed=7)
            )

    report = await once()
    assert report.outcomes()["running"] > 45
    assert report.bots[0].replies[0] >= 28
    assert await once() == report
