"""Connection churn: short connections at a rate far above what the pool holds per
recycle delay, few open at once, are never refused (resting slots do not count against
``server.max_connections``), in memory and in virtual time."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from trioserver.client import Client
from trioserver.testing import MemoryListener, memory_config
from trioserver.worker import Worker

from .conftest import parse_responses, raw_request, read_to_eof

MAX_CONNECTIONS = 4
RECYCLE_DELAY = 1.0
#: Connections per recycle delay: 50 times what the pool admits at once.
CONNECTIONS = 200


async def test_a_connection_rate_far_above_the_pool_per_recycle_delay_is_never_refused(
    docroot: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """200 HTTP/1.0 requests (one connection each) and 200 binary pings (one connection
    each), two connections open at a time, all within 0.4 s: every one is answered,
    none refused, and the slots they leave are resting (a pool that counted resting
    slots would refuse the fifth)."""
    config = memory_config(
        http__document_root=docroot,
        server__max_connections=MAX_CONNECTIONS,
        connection__recycle_delay=RECYCLE_DELAY,
    )
    binary, http = MemoryListener(), MemoryListener()
    worker = Worker(config, listeners=[binary], http_listeners=[http])
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)

        async def one_http(n: int) -> None:
            stream = await http.connect(peer=f"10.0.1.{n % 250}:8000")
            await stream.send_all(raw_request("/a.txt", version="1.0"))
            [response] = parse_responses(await read_to_eof(stream))
            assert response.status == 200
            await stream.aclose()

        async def one_binary(n: int) -> None:
            async with Client(await binary.connect(peer=f"10.0.2.{n % 250}:9000")) as client:
                await client.ping()

        for n in range(CONNECTIONS):
            async with trio.open_nursery() as pair:  # two open at once
                pair.start_soon(one_http, n)
                pair.start_soon(one_binary, n)
            await trio.sleep(0.001)
        stats = worker.statistics()
        assert trio.current_time() - start < RECYCLE_DELAY / 2
        assert stats.connections_refused == 0
        assert stats.connections_accepted == 2 * CONNECTIONS
        assert stats.connections_resting >= 2 * CONNECTIONS - MAX_CONNECTIONS
        worker.stop(grace=0)
