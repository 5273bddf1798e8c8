"""How long a bot swarm takes in real time, beside the least trio itself needs for it.

    python benchmarks/swarm_bench.py [--bots 1000] [--duration 600] [--repeat 3]

Three cases, run in turn ``--repeat`` times (interleaved, so that the noise of a
shared machine falls on all alike), each in its own ``trio.run`` under an
autojump ``MockClock``, the way the ``autojump_clock`` fixture runs a test:

- ``trio floor``: each bot is a pair of bare trio tasks. At the heartbeat
  script's times (a random phase in [0, W), then every W) the bot task wakes the
  other, which wakes it back; then it sleeps with the kit's ``wait_until``. Three
  task steps and one deadline per ping, no bytes, no parsing: the least any swarm
  of real clients against a real worker can cost on trio on this machine.
- ``kit, no faults``: ``run_swarm`` with the heartbeat script of
  ``tests/testing/test_swarm.py`` (register, log in, ping every W) against a
  real worker on a memory listener, every connection a fault-free simulated link.
- ``kit, fault plan``: the same with the seeded fault plan of that test (20 %
  split, 20 % delayed, 5 % each stop reading, reset, half-close).

Prints real and CPU seconds (min and median) and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
import trio.testing

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.testing.test_swarm import W, heartbeat_script  # noqa: E402
from trioserver.testing import FaultPlan, run_swarm, serve_in_memory  # noqa: E402
from trioserver.testing._network import wait_until  # noqa: E402


def _abort(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.SUCCEEDED


async def trio_floor(bots: int, duration: float) -> int:
    """The scheduler work of a swarm and nothing else; returns the pings made."""
    pings = 0

    async def pair(index: int) -> None:
        nonlocal pings
        phase = random.Random(index).uniform(0, W)
        me = trio.lowlevel.current_task()
        other: list[trio.lowlevel.Task] = []

        async def echo(task_status: trio.TaskStatus[None]) -> None:
            other.append(trio.lowlevel.current_task())
            task_status.started()
            while True:
                await trio.lowlevel.wait_task_rescheduled(_abort)
                trio.lowlevel.reschedule(me)

        async with trio.open_nursery() as nursery:
            await nursery.start(echo)
            await wait_until(trio.current_time() + phase)
            while True:
                trio.lowlevel.reschedule(other[0])
                await trio.lowlevel.wait_task_rescheduled(_abort)
                pings += 1
                await wait_until(trio.current_time() + W)

    with trio.move_on_after(duration):
        async with trio.open_nursery() as nursery:
            for index in range(bots):
                nursery.start_soon(pair, index)
    return pings


async def kit_swarm(bots: int, duration: float, plan: FaultPlan) -> int:
    async with serve_in_memory() as server:
        report = await run_swarm(
            server, heartbeat_script, bots=bots, duration=duration, faults=plan
        )
    return sum(bot.replies.get(0, 0) for bot in report.bots)


def measure(case: Callable[[], Awaitable[int]]) -> tuple[float, float, int]:
    """Real seconds, CPU seconds, and the pings answered, of one run of ``case``."""
    real, cpu = time.perf_counter(), time.process_time()
    pings = trio.run(case, clock=trio.testing.MockClock(autojump_threshold=0))
    return time.perf_counter() - real, time.process_time() - cpu, pings


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} cores, load {load}; Python {platform.python_version()}, "
        f"trio {trio.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bots", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=600.0, help="virtual seconds")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    faults = FaultPlan.random(args.seed, stop_reading=0.05, reset=0.05, half_close=0.05)
    cases: dict[str, Callable[[], Awaitable[int]]] = {
        "trio floor": lambda: trio_floor(args.bots, args.duration),
        "kit, no faults": lambda: kit_swarm(args.bots, args.duration, FaultPlan(args.seed)),
        "kit, fault plan": lambda: kit_swarm(args.bots, args.duration, faults),
    }
    print(f"machine: {machine()}")
    print(f"{args.bots} bots x {args.duration:g} virtual s, ping every {W:g} s, seed {args.seed}")
    runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in cases}
    for _ in range(args.repeat):
        for name, case in cases.items():
            runs[name].append(measure(case))
    print(f"{'case':<16} {'real min':>9} {'median':>8} {'cpu min':>8} {'pings':>7} {'us/ping':>8}")
    for name, results in runs.items():
        reals = [r for r, _, _ in results]
        cpus = [c for _, c, _ in results]
        pings = results[0][2]
        print(
            f"{name:<16} {min(reals):>8.2f}s {statistics.median(reals):>7.2f}s "
            f"{min(cpus):>7.2f}s {pings:>7} {1e6 * min(cpus) / max(pings, 1):>8.0f}"
        )


if __name__ == "__main__":
    main()
