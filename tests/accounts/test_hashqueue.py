"""The hash pool's line: bounded, round robin over networks, clean networks first."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from trioserver.accounts.hashqueue import CLEAN, SUSPECT, Busy, FairQueue, HashPool, QueueFull


def drain(queue: FairQueue[str]) -> list[str]:
    out = []
    while (item := queue.pop()) is not None:
        out.append(item)
    return out


def test_round_robin_over_networks_each_in_order() -> None:
    queue: FairQueue[str] = FairQueue(100)
    for i in range(4):
        queue.push("attacker", SUSPECT, f"a{i}")
    queue.push("other", SUSPECT, "o0")
    queue.push("other", SUSPECT, "o1")
    queue.push("third", SUSPECT, "t0")
    assert drain(queue) == ["a0", "o0", "t0", "a1", "o1", "a2", "a3"]
    assert len(queue) == 0


def test_clean_lane_is_served_first() -> None:
    queue: FairQueue[str] = FairQueue(100)
    for i in range(3):
        queue.push(f"net{i}", SUSPECT, f"s{i}")
    queue.push("owner", CLEAN, "owner")
    assert drain(queue) == ["owner", "s0", "s1", "s2"]


def test_full_line_refuses_and_clean_work_pushes_out_the_biggest_suspect_pile() -> None:
    queue: FairQueue[str] = FairQueue(3)
    queue.push("big", SUSPECT, "b0")
    queue.push("big", SUSPECT, "b1")
    queue.push("small", SUSPECT, "s0")
    with pytest.raises(QueueFull):
        queue.push("small", SUSPECT, "s1")
    assert queue.push("owner", CLEAN, "o") == "b1"  # the newest of the biggest pile
    assert queue.push("owner2", CLEAN, "o2") in {"b0", "s0"}
    assert queue.push("owner3", CLEAN, "o3") in {"b0", "s0"}
    with pytest.raises(QueueFull):  # full of clean work: nothing worse to push out
        queue.push("owner4", CLEAN, "o4")
    assert drain(queue) == ["o", "o2", "o3"]


def test_discard() -> None:
    queue: FairQueue[str] = FairQueue(3)
    queue.push("a", SUSPECT, "x")
    queue.push("a", SUSPECT, "y")
    assert queue.discard("x") and not queue.discard("x")
    assert len(queue) == 1 and drain(queue) == ["y"]


async def test_pool_runs_at_most_threads_and_answers_busy_when_the_line_is_full() -> None:
    pool = HashPool(threads=1, max_waiting=2)
    gate = threading.Event()
    order: list[str] = []

    def work(name: str) -> str:
        gate.wait(10)
        order.append(name)
        return name

    results: dict[str, object] = {}

    async def ask(name: str, key: str, lane: int) -> None:
        try:
            results[name] = await pool.run(key, lane, work, name)
        except Busy:
            results[name] = "busy"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, "first", "attacker", SUSPECT)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.running == 1
        nursery.start_soon(ask, "a1", "attacker", SUSPECT)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(ask, "a2", "attacker", SUSPECT)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(ask, "a3", "attacker", SUSPECT)  # full: busy at once
        await trio.testing.wait_all_tasks_blocked()
        assert results == {"a3": "busy"}
        nursery.start_soon(ask, "owner", "owner", CLEAN)  # takes a2's place
        await trio.testing.wait_all_tasks_blocked()
        assert results == {"a3": "busy", "a2": "busy"}
        gate.set()
    assert order == ["first", "owner", "a1"]
    assert pool.running == 0 and pool.waiting == 0 and pool.refused == 2


async def test_a_waiter_that_gives_up_leaves_the_line() -> None:
    pool = HashPool(threads=1, max_waiting=4)
    gate = threading.Event()

    def work() -> None:
        gate.wait(10)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.run, "a", CLEAN, work)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(pool.run, "b", CLEAN, work)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.01):
            await pool.run("c", CLEAN, work)
        assert pool.waiting == 1  # only b
        gate.set()
    assert pool.running == 0 and pool.waiting == 0


async def test_with_two_threads_one_is_kept_for_clean_work() -> None:
    pool = HashPool(threads=2, max_waiting=4)
    gate = threading.Event()
    order: list[str] = []

    def work(name: str) -> None:
        gate.wait(10)
        order.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.run, "a", SUSPECT, work, "a1")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(pool.run, "a", SUSPECT, work, "a2")
        await trio.testing.wait_all_tasks_blocked()
        assert (pool.running, pool.waiting) == (1, 1)  # a2 waits: the other thread is kept
        assert not pool.would_refuse(CLEAN)
        nursery.start_soon(pool.run, "owner", CLEAN, work, "owner")
        await trio.testing.wait_all_tasks_blocked()
        assert (pool.running, pool.waiting) == (2, 1)  # the owner started at once
        gate.set()
    # a2 ran only once a thread was free; which of a1 and the owner finished first is
    # up to the threads.
    assert order[0] != "a2" and sorted(order) == ["a1", "a2", "owner"]


def test_pop_if_never_skips_the_lane_order() -> None:
    queue: FairQueue[str] = FairQueue(10)
    queue.push("x", SUSPECT, "s")
    assert queue.pop_if(lambda item: item != "s") is None and len(queue) == 1
    queue.push("y", CLEAN, "c")
    assert queue.pop_if(lambda item: item != "s") == "c"
    assert queue.has_room(CLEAN) and queue.has_room(SUSPECT)
