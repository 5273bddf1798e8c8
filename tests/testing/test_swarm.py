"""Bot swarms: what each bot saw, fault by fault, and the same report from the same seed."""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing

from trioserver.testing import (
    Bot,
    Delay,
    FaultPlan,
    HalfClose,
    Outcome,
    Reset,
    StopReading,
    SwarmReport,
    run_swarm,
    serve_in_memory,
)

W = 20.0
HEARTBEAT = 3 * W + 10


async def heartbeat_script(bot: Bot) -> None:
    """Register, log in, then ping every W seconds from a random start in [0, W)."""
    await bot.sleep(bot.random.uniform(0, W))
    assert await bot.register() == 0
    assert await bot.login() == 0
    while True:
        await bot.ping()
        await bot.sleep(W)


async def test_each_bot_reports_how_its_faults_ended_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def script(bot: Bot) -> None:
        if bot.index == 4:
            return  # connects and says nothing: the heartbeat closes it
        while True:
            await bot.ping()
            await bot.sleep(W)

    plan = FaultPlan(
        seed=1,
        fixed={
            1: [Reset(at=45.5)],
            2: [StopReading(at=30.0)],
            3: [HalfClose(at=50.0)],
            5: [Delay(0.5)],
        },
    )
    async with serve_in_memory() as server:
        report = await run_swarm(server, script, bots=6, duration=200.0, faults=plan)
    bots = report.bots
    assert [bot.outcome for bot in bots] == [
        Outcome.RUNNING,
        Outcome.RESET,
        Outcome.CLOSED,
        Outcome.HALF_CLOSED,
        Outcome.FINISHED,
        Outcome.RUNNING,
    ]
    assert bots[0].replies == {0: 10} and bots[0].ended_at == 200.0
    assert bots[1].ended_at == 60.0  # reset at 45.5, noticed by its next ping
    # Its last ping that got through was at 20 s; the one at 40 s stays unread, so
    # the heartbeat closes it at 40 + 70, and it sees EOF then.
    assert bots[2].ended_at == pytest.approx(40 + HEARTBEAT) and bots[2].replies == {0: 2}
    assert bots[3].ended_at == pytest.approx(60.0) and bots[3].replies == {0: 3}
    assert bots[4].ended_at == 0.0 and bots[4].sent == 0
    assert [e.at for e in bots[5].events[:4]] == [0.0, 1.0, 20.0 + 1.0, 22.0]
    assert report.statistics.kicks_by_reason == {"heartbeat": 2}
    assert report.outcomes() == {
        "closed": 1,
        "finished": 1,
        "half_closed": 1,
        "reset": 1,
        "running": 2,
    }


async def test_ramp_up_spreads_the_connects_and_bad_arguments_are_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def ping_once(bot: Bot) -> None:
        await bot.ping()

    async with serve_in_memory() as server:
        report = await run_swarm(server, ping_once, bots=4, duration=10.0, ramp_up=8.0)
        assert [bot.events[0].at for bot in report.bots] == [0.0, 2.0, 4.0, 6.0]
        assert report.outcomes() == {"finished": 4}
        for bad in ({"bots": -1}, {"duration": float("nan")}, {"ramp_up": -1.0}):
            arguments = {"bots": 1, "duration": 1.0, "ramp_up": 0.0, **bad}
            with pytest.raises(ValueError, match=next(iter(bad))):
                await run_swarm(server, ping_once, **arguments)  # type: ignore[arg-type]


async def swarm(bots: int, seed: int) -> tuple[SwarmReport, float]:
    async with serve_in_memory() as server:
        start = time.perf_counter()
        plan = FaultPlan.random(seed, stop_reading=0.05, reset=0.05, half_close=0.05)
        report = await run_swarm(server, heartbeat_script, bots=bots, duration=600.0, faults=plan)
        return report, time.perf_counter() - start


def check(report: SwarmReport, bots: int) -> None:
    assert len(report.bots) == bots
    assert report.with_outcome(Outcome.ERROR) == []
    outcomes = report.outcomes()
    assert outcomes["running"] > 0.8 * bots
    # Every fault kind happened and ended some bots the way it should.
    assert {"reset", "half_closed", "closed"} <= outcomes.keys()
    for bot in report.with_outcome(Outcome.RESET):
        assert any(isinstance(f, Reset) for f in bot.faults)
    for bot in report.with_outcome(Outcome.CLOSED):  # stalled readers: heartbeat kicks
        assert any(isinstance(f, StopReading) for f in bot.faults)
    for bot in report.with_outcome(Outcome.RUNNING):  # pinged all along, unless stalled
        if any(isinstance(f, StopReading) for f in bot.faults):
            continue
        replies = [event.at for event in bot.events if event.kind == "reply"]
        assert len(replies) >= 2 + (600 - W) // (W + 2)  # register, login, pings
        assert replies[-1] > 600 - W - 2
    kicks = report.statistics.kicks_by_reason
    assert kicks == {"heartbeat": outcomes["closed"]}


async def test_100_bots_same_seed_same_report(autojump_clock: trio.testing.MockClock) -> None:
    first, _ = await swarm(100, seed=11)
    second, _ = await swarm(100, seed=11)
    check(first, 100)
    assert first == second
    other, _ = await swarm(100, seed=12)
    assert other != first


@pytest.mark.slow
async def test_1000_bots_for_10_virtual_minutes(autojump_clock: trio.testing.MockClock) -> None:
    first, real = await swarm(1000, seed=2024)
    print(f"\n1000 bots x 600 virtual s: {real:.1f} s real; {first.outcomes()}")
    check(first, 1000)
    assert sum(bot.replies.get(0, 0) for bot in first.bots) > 25_000
    second, real_again = await swarm(1000, seed=2024)
    print(f"again: {real_again:.1f} s real")
    assert first == second
