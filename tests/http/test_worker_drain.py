"""A draining worker and its HTTP connections, in memory and in virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from trioserver.testing import MemoryListener, memory_config
from trioserver.worker import Worker

from .conftest import parse_responses, raw_request


@asynccontextmanager
async def http_worker(docroot: Path) -> AsyncIterator[tuple[Worker, MemoryListener]]:
    config = memory_config(http__document_root=docroot, http__keep_alive_timeout=30.0)
    listener = MemoryListener()
    worker = Worker(config, listeners=[], http_listeners=[listener])
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        yield worker, listener
        worker.stop(grace=0)


async def read_to_eof(stream: trio.abc.Stream) -> bytes:
    received = bytearray()
    while chunk := await stream.receive_some(65536):
        received += chunk
    return bytes(received)


async def test_a_new_connection_gets_a_grace_for_its_first_request(
    docroot: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Accepted before the drain, its request still on the way: it is answered (and the
    connection closed after it); one that never sends is closed after 1 s."""
    async with http_worker(docroot) as (worker, listener):
        late = await listener.connect()
        silent = await listener.connect()
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        worker.stop()
        await trio.sleep(0.5)
        await late.send_all(raw_request("/a.txt"))
        [response] = parse_responses(await read_to_eof(late))
        assert response.status == 200
        assert await read_to_eof(silent) == b""
        assert trio.current_time() - start == 1.0
        with trio.fail_after(1):
            await worker.wait_http_connections(0)


async def test_one_whose_task_starts_after_the_drain_gets_the_grace_too(
    docroot: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Not the header timeout (10 s by default): the same grace as the others."""
    async with http_worker(docroot) as (worker, listener):
        late = await listener.connect()
        silent = await listener.connect()
        start = trio.current_time()
        worker.stop()  # before the connections' tasks have run
        await trio.sleep(0.5)
        await late.send_all(raw_request("/a.txt"))
        [response] = parse_responses(await read_to_eof(late))
        assert response.status == 200
        assert await read_to_eof(silent) == b""
        assert trio.current_time() - start == 1.0


async def test_an_idle_keep_alive_connection_closes_at_once(
    docroot: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with http_worker(docroot) as (worker, listener):
        client = await listener.connect()
        await client.send_all(raw_request("/a.txt"))
        assert parse_responses(await client.receive_some(65536))[0].status == 200
        start = trio.current_time()
        worker.stop()
        assert await read_to_eof(client) == b""
        assert trio.current_time() == start
