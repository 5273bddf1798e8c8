"""A draining worker and its HTTP connections, in memory and in virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from trioserver.testing import MemoryListener, memory_config
from trioserver.worker import Worker

from .conftest import memory_worker, parse_responses, raw_request, read_to_eof


@asynccontextmanager
async def http_worker(docroot: Path) -> AsyncIterator[tuple[Worker, MemoryListener]]:
    config = memory_config(http__document_root=docroot, http__keep_alive_timeout=30.0)
    async with memory_worker(config) as (worker, _, http):
        yield worker, http


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


WEBSOCKET_HEAD = (
    b"GET /ws HTTP/1.1\r\nHost: memory\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def test_a_websocket_handshake_arriving_in_the_drain_is_refused_with_503(
    docroot: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Accepted before the drain, its upgrade request within the first-request grace:
    the worker is going away, so it answers 503 rather than open a WebSocket to close."""
    async with http_worker(docroot) as (worker, listener):
        client = await listener.connect()
        await trio.testing.wait_all_tasks_blocked()
        worker.stop()
        await trio.sleep(0.5)
        await client.send_all(WEBSOCKET_HEAD)
        [response] = parse_responses(await read_to_eof(client))
        assert response.status == 503
        with trio.fail_after(1):
            await worker.wait_http_connections(0)


async def test_a_drain_that_begins_while_the_101_is_written_closes_the_websocket_with_1001(
    docroot: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The 101 already decided (the drain cannot take it back): the client gets it, and
    the new WebSocket the grace a new connection gets for its first packet (not the
    drain's whole timeout), then a 1001 close frame, and the connection ends."""
    async with http_worker(docroot) as (worker, listener):
        client = await listener.connect(lockstep=True)  # the 101 waits until read
        await client.send_all(WEBSOCKET_HEAD)
        await trio.testing.wait_all_tasks_blocked()  # the worker is blocked writing the 101
        worker.stop()
        start = trio.current_time()
        received = bytearray()
        head, frame = b"", b""
        while len(frame) < 2 or len(frame) < 2 + frame[1]:
            received += await client.receive_some(65536)
            head, _, frame = bytes(received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        # One unmasked close frame from the server (FIN + opcode 8, a short payload):
        # code 1001, going away, and nothing after it.
        assert frame[0] == 0x88
        assert len(frame) == 2 + frame[1]
        assert frame[2:4] == (1001).to_bytes(2, "big")
        # After the first-packet grace a new connection gets in a drain, not the drain's end.
        assert trio.current_time() - start == 1.0
        assert await read_to_eof(client) == b""  # the server closes after its close frame
        with trio.fail_after(5):
            await worker.wait_http_connections(0)
        assert worker.statistics().kicks_by_reason == {}
