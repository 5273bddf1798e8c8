"""A reload's handoff between two workers in one process: how long, how much CPU, the longest pause.

::

    python benchmarks/handoff_worker.py                 # 2,000 connections, 200 pinging
    python benchmarks/handoff_worker.py --connections 5000 --pinging 500

Worker A serves ``--connections`` loopback clients, of which ``--pinging`` ping in
a loop (one ping in flight each); A then hands every connection to worker B
(``Worker.hand_over`` / ``Worker.adopt_from`` over a socketpair). Printed: the
handoff's wall time and the process's CPU time during it (both workers and the
clients share the one process, so this is an upper bound of the two workers'
cost), per connection, and the longest round trip a pinging client saw across
the handoff, against the longest before it. The master's side (the real reload,
processes, SIGHUP) is measured elsewhere; this is the worker's part alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import trio

from trioserver.config import Address, Config
from trioserver.framer import PING
from trioserver.handoff_channel import channel_pair
from trioserver.worker import Worker

LOOPBACK = (Address("127.0.0.1", 0),)


def machine() -> str:
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.2f}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, trio {trio.__version__}"
    )


async def ping_once(sock: trio.socket.SocketType) -> None:
    await sock.send(PING)
    got = 0
    while got < len(PING):
        data = await sock.recv(64)
        if not data:
            raise ConnectionError("the server closed a connection")
        got += len(data)


async def main(connections: int, pinging: int) -> None:
    config = Config().replace(
        server__listen=LOOPBACK,
        server__max_connections=connections + 10,
        http__listen=(),
        connection__flood_check=False,
    )
    a = Worker(config, instance="bench")
    b = Worker(config, index=1, instance="bench")
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        port = a.addresses[0][1]
        socks = []
        for _ in range(connections):
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", port))
            await ping_once(sock)
            socks.append(sock)
        phase = ["before"]
        worst = {"before": 0.0, "across": 0.0}
        stop = trio.Event()

        async def pinger(sock: trio.socket.SocketType) -> None:
            while not stop.is_set():
                start = time.perf_counter()
                await ping_once(sock)
                seen = phase[0]
                worst[seen] = max(worst[seen], time.perf_counter() - start)

        async with trio.open_nursery() as pingers:
            for sock in socks[:pinging]:
                pingers.start_soon(pinger, sock)
            await trio.sleep(1.0)  # a steady state before the handoff
            old_end, new_end = channel_pair()
            nursery.start_soon(b.adopt_from, new_end)
            phase[0] = "across"
            cpu, wall = time.process_time(), time.perf_counter()
            counts = await a.hand_over(old_end)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            await trio.sleep(0.5)  # every pinger has had a round trip on the new worker
            stop.set()
        old_end.close()
        for sock in socks:
            await ping_once(sock)  # every connection is still there
            sock.close()
        print(machine())
        print(
            f"{connections} connections ({pinging} pinging): moved {counts.moved}, kept "
            f"{dict(counts.kept)}, failed {counts.failed}; handoff {wall * 1000:.0f} ms wall, "
            f"{cpu * 1000:.0f} ms CPU ({cpu / max(counts.moved, 1) * 1e6:.0f} µs CPU per "
            f"connection); longest ping round trip {worst['before'] * 1000:.1f} ms before, "
            f"{worst['across'] * 1000:.1f} ms across the handoff"
        )
        b.stop(grace=0)
        new_end.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--pinging", type=int, default=200)
    args = parser.parse_args()
    trio.run(main, args.connections, args.pinging)
