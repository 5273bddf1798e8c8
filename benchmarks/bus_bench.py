"""Which Redis client for the hub's bus: PUBLISH rate and CPU per publish, three ways.

    python benchmarks/bus_bench.py [--publishes 20000]   # starts its own redis-server

- ``trioserver``: ``RedisBus`` (``trioserver/resp.py`` on a trio stream): ``hub.publish``
  queues the command and returns; a writer sends what is queued in one write.
- ``redis-py thread``: redis-py's blocking client, one ``trio.to_thread.run_sync`` per
  publish (the event loop must not block on it).
- ``coredis``: coredis on trio (through anyio), ``await client.publish`` per publish.

Needs ``pip install redis coredis`` for the other two (not dependencies of trioserver).
Printed: publishes per second of wall time and CPU µs per publish of this process.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import trio.lowlevel

from tests.hub.redisserver import RedisServer
from trioserver.bus import RedisBus
from trioserver.hub import Hub

BODY = b"x" * 100


async def ours(url: str, count: int) -> None:
    hub = Hub(secrets.token_hex(4), 1, 1)
    bus = RedisBus(hub, url)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        await bus.connected.wait_value(True)
        for i in range(count):
            hub.publish("bench", 200, BODY)
            if i % 256 == 255:
                await trio.lowlevel.checkpoint()  # a handler task yields like this between batches
        while bus._waiting:  # every reply read
            await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()


async def redis_py_thread(url: str, count: int) -> None:
    import redis

    client = redis.Redis.from_url(url)
    for _ in range(count):
        await trio.to_thread.run_sync(client.publish, "bench", BODY)
    client.close()


async def coredis_trio(url: str, count: int) -> None:
    import coredis

    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    client = coredis.Redis(host, int(port))
    async with client:
        for _ in range(count):
            await client.publish("bench", BODY)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--publishes", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        for name, fn in [("trioserver", ours), ("redis-py thread", redis_py_thread), ("coredis", coredis_trio)]:
            for _ in range(args.runs):
                wall, cpu = time.perf_counter(), time.process_time()
                try:
                    trio.run(fn, server.url, args.publishes)
                except ImportError as exc:
                    print(f"{name:16} skipped: {exc}")
                    break
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                print(
                    f"{name:16} {args.publishes / wall:10,.0f} publishes/s  "
                    f"{cpu / args.publishes * 1e6:7.1f} CPU µs/publish"
                )
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
