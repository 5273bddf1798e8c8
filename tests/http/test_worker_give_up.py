"""When the pool runs low, idle HTTP keep-alive connections are given up first (oldest
first), so new clients of any listener are not refused; busy and fresh ones are kept."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing

from trioserver.client import Client
from trioserver.http import HttpConnectionState
from trioserver.testing import MemoryListener, memory_config
from trioserver.worker import Worker

from .conftest import memory_worker, parse_responses, raw_request


@asynccontextmanager
async def worker(docroot: Path, **settings: Any) -> AsyncIterator[tuple[Worker, Any, Any]]:
    config = memory_config(
        http__document_root=docroot,
        http__keep_alive_timeout=300.0,
        server__max_connections=10,
        **settings,
    )
    async with memory_worker(config) as started:
        yield started


async def idle_keep_alive(http: MemoryListener, n: int) -> trio.abc.Stream:
    """A connection that made one request, read its answer, and stays open."""
    stream = await http.connect(peer=f"10.0.1.{n}:8000")
    await stream.send_all(raw_request("/a.txt"))
    received = b""
    while not parse_responses(received):
        received += await stream.receive_some(65536)
    return stream


async def closed(stream: trio.abc.Stream) -> bool:
    with trio.move_on_after(0.001):  # closed already, or not (virtual time)
        return await stream.receive_some(1) == b""
    return False


async def test_idle_keep_alive_connections_make_room_oldest_first(
    docroot: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """10 slots, 1 kept in reserve; a fresh HTTP connection and 7 idle keep-alive ones
    hold 8. Nine binary clients all get in (without the rule the third is refused): every
    arrival that leaves 1 slot free or none gives up two idle ones, the oldest first; the
    fresh connection (its first request may be on the way) is kept."""
    async with worker(docroot, http__keep_alive_reserve=0.1) as (w, binary, http):
        fresh = await http.connect(peer="10.0.2.1:8000")
        idle = [await idle_keep_alive(http, n) for n in range(7)]
        await trio.testing.wait_all_tasks_blocked()
        assert w.http_connection_count == 8
        clients = []
        given_up = []
        for n in range(9):
            client = Client(await binary.connect(peer=f"10.0.0.{n}:9000"))
            await client.ping()
            await trio.testing.wait_all_tasks_blocked()
            clients.append(client)
            given_up.append([i for i, s in enumerate(idle) if await closed(s)])
        assert [len(g) for g in given_up] == [2, 2, 4, 4, 6, 6, 7, 7, 7]
        assert given_up[0] == [0, 1] and given_up[2] == [0, 1, 2, 3]  # oldest first
        stats = w.statistics()
        assert (stats.connections_refused, stats.http_given_up) == (0, 7)
        assert w.http_connection_count == 1 and not await closed(fresh)
        refused = Client(await binary.connect(peer="10.0.0.99:9000"))
        assert await refused.at_eof()  # the pool is full of what cannot be given up
        assert w.statistics().connections_refused == 1


async def test_connections_with_no_request_yet_are_not_given_up(
    docroot: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Only one that has been answered and waits: a first request may be on its way."""
    async with worker(docroot, http__keep_alive_reserve=0.0) as (w, binary, http):
        streams = [await http.connect(peer=f"10.0.1.{n}:8000") for n in range(9)]
        await trio.testing.wait_all_tasks_blocked()
        # The pool full but for one: nothing idle, nothing given up.
        last = Client(await binary.connect(peer="10.0.0.1:9000"))
        await last.ping()
        over = Client(await binary.connect(peer="10.0.0.2:9000"))
        assert await over.at_eof()
        assert w.statistics().http_given_up == 0
        assert w.http_connection_count == 9
        for stream in streams:
            assert not await closed(stream)


class _Connection:
    """A connection as its state sees it: it records being interrupted."""

    def __init__(self) -> None:
        self.interrupted = 0

    def interrupt(self) -> None:
        self.interrupted += 1

    def shorten(self, deadline: float) -> None:
        raise AssertionError("only a fresh connection is shortened")


def test_which_states_are_idle() -> None:
    """Idle: answered at least once, not sending, not stopping, and serving."""
    state = HttpConnectionState()
    assert not state.idle  # not serving yet (an HTTPS handshake)
    state.connection = connection = _Connection()
    assert not state.idle  # fresh: no request yet
    state.fresh = False
    assert state.idle
    state.sending = True
    assert not state.idle
    state.sending = False
    state.give_up()
    assert connection.interrupted == 1 and state.draining and not state.idle
