"""Instructions per round trip on the worker's socket path, counted by callgrind.

Seconds on this shared 2-core machine drift by tens of percent from run to run;
instruction counts do not (the same code and inputs give the same count, whatever
else the machine does). This runs one worker and one client in one process over
loopback, ``ROUNDS`` round trips of ``BATCH`` pipelined pings each, under
``valgrind --tool=callgrind`` twice (a short and a long run) and prints the
difference per round trip: the startup cancels out, the steady state remains.
Client and server are counted together; the client is the same code for every
checkout measured, so a change in the count is the server's.

::

    python benchmarks/instructions.py                 # batches of 16 and of 1
    python benchmarks/instructions.py --batch 16 --rounds 200 1200
    python benchmarks/instructions.py --server bare   # the bare trio baseline instead
    python benchmarks/instructions.py --readers parked   # every wait in the worker's parking

A reader waits in trio's ``wait_readable`` when it is back within
``transport.BUSY_WAIT`` (10 ms) of its previous wait, else in the worker's read
parking. Under callgrind a round trip takes longer than that, so ``--readers``
says which path to count: ``busy`` (the default: a client pinging back to back,
as on real hardware) or ``parked`` (a reader quiet between packets).

With ``--server bare`` the same client talks to ``baselines/bare_trio.py``'s handler
served by ``trio.serve_tcp`` in the same process: the difference between the two
counts is what trioserver adds over trio per round trip.

Compare two checkouts by running it in each (a worktree per commit).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


async def _ping(host: str, port: int, rounds: int, batch: int) -> None:
    import trio

    from trioserver.framer import PING

    sock = trio.socket.socket()
    await sock.connect((host, port))
    data = PING * batch
    for _ in range(rounds):
        await sock.send(data)
        got = 0
        while got < len(data):
            got += len(await sock.recv(65536))
    sock.close()


async def _serve_and_ping(rounds: int, batch: int, server: str, readers: str) -> None:
    import trio

    from trioserver import transport

    # Which wait a reader takes (see the module docstring): the module's global.
    transport.BUSY_WAIT = math.inf if readers == "busy" else 0.0  # type: ignore[misc]

    if server == "bare":
        sys.path.insert(0, str(ROOT / "benchmarks" / "baselines"))
        from bare_trio import handle

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            await _ping("127.0.0.1", port, rounds, batch)
            nursery.cancel_scope.cancel()
        return

    from trioserver.config import Address
    from trioserver.testing import memory_config
    from trioserver.worker import Worker

    config = memory_config(
        connection__flood_check=False,
        connection__heartbeat=False,
        server__listen=(Address("127.0.0.1", 0),),
        http__listen=(),
    )
    worker = Worker(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        host, port = worker.addresses[0]
        await _ping(host, port, rounds, batch)
        worker.stop(grace=0)


def _count(rounds: int, batch: int, server: str, readers: str) -> int:
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            os.path.realpath(sys.executable),
            __file__,
            "--child",
            str(rounds),
            str(batch),
            "--server",
            server,
            "--readers",
            readers,
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=900,
    )
    match = re.search(r"Collected : (\d+)", out.stderr)
    if match is None:
        raise SystemExit(f"callgrind printed no count:\n{out.stderr[-2000:]}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="*", default=[16, 1])
    parser.add_argument("--rounds", type=int, nargs=2, default=[200, 1200])
    parser.add_argument("--server", choices=["trioserver", "bare", "both"], default="trioserver")
    parser.add_argument("--readers", choices=["busy", "parked"], default="busy")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import trio

        trio.run(_serve_and_ping, *args.child, args.server, args.readers)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian package valgrind)")
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    ).stdout.strip()
    print(f"code: {commit}; readers: {args.readers}")
    short, long = args.rounds
    servers = ["bare", "trioserver"] if args.server == "both" else [args.server]
    for batch in args.batch:
        counts = {}
        for server in servers:
            readers = args.readers
            per_round = (
                _count(long, batch, server, readers) - _count(short, batch, server, readers)
            ) / (long - short)
            counts[server] = per_round
            print(
                f"{server:>10} batch {batch:>3}: {per_round:,.0f} instructions per round trip, "
                f"{per_round / batch:,.0f} per ping (client and server)"
            )
        if len(counts) == 2:
            print(
                f"{'':>10} batch {batch:>3}: trioserver adds "
                f"{(counts['trioserver'] - counts['bare']) / batch:,.0f} per ping "
                f"({counts['trioserver'] / counts['bare']:.2f}x bare's total)"
            )


if __name__ == "__main__":
    main()
