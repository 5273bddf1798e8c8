"""Where a worker's time goes under register or login 100x16: cProfile of the server only.

One worker runs in this process on 127.0.0.1 (the account store in memory or in a
SQLite file, the ``insecure-fast`` hash, every limit off, as in ``run.py``'s
account cases) under ``cProfile``; the C load generator (``build/loadgen``, which
``run.py`` builds) drives it from another process, so the profile holds the
server's work and nothing of the client's.

::

    python benchmarks/account_profile.py --mix register --store memory
    python benchmarks/account_profile.py --mix login --store sqlite --seconds 8 --top 30

Prints the load generator's rate, the worker's CPU per request (profiler overhead
included: read the shares, not the µs) and the functions with the most own time and
the most time inclusive.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

BENCH = Path(__file__).resolve().parent
LOADGEN = BENCH / "build" / "loadgen"
USERS = 1000


def _config(store: str, workdir: Path) -> object:
    from trioserver.config import Address
    from trioserver.testing import memory_config

    url = "memory:" if store == "memory" else f"sqlite:///{workdir / 'accounts.sqlite3'}"
    return memory_config(
        accounts__url=url,
        accounts__max_registrations_per_address=0,
        accounts__max_failures_per_address=0,
        accounts__max_failures_per_name=0,
        connection__flood_check=False,
        connection__heartbeat=False,
        server__listen=(Address("127.0.0.1", 0),),
        http__listen=(),
    )


def _loadgen(port: int, *args: str) -> dict[str, object]:
    argv = [str(LOADGEN), "-p", str(port), *args, "-j"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


async def _serve(args: argparse.Namespace, profile: cProfile.Profile) -> dict[str, object]:
    from trioserver.worker import Worker

    workdir = Path(tempfile.mkdtemp(prefix="account-profile-"))
    worker = Worker(_config(args.store, workdir))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        port = worker.addresses[0][1]
        users = ["-u", "bench_", "-n", str(USERS)]
        if args.mix == "login":
            await trio.to_thread.run_sync(
                lambda: _loadgen(port, "-A", *users, "-c", "10", "-d", "8", "-t", "60")
            )
        load = ["-c", "100", "-d", "16", "-t", str(args.seconds), "-w", "1", "-m", args.mix]
        load += users if args.mix == "login" else []
        cpu = time.process_time()
        profile.enable()
        report = await trio.to_thread.run_sync(lambda: _loadgen(port, *load))
        profile.disable()
        report["process_cpu_s"] = time.process_time() - cpu
        worker.stop(grace=0)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mix", choices=["register", "login"], default="register")
    parser.add_argument("--store", choices=["memory", "sqlite"], default="memory")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if not LOADGEN.exists():
        raise SystemExit(f"{LOADGEN} is missing: run benchmarks/run.py once (it builds it)")
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; {args.mix}-100x16, {args.store} store, fast hash"
    )
    profile = cProfile.Profile()
    report = trio.run(_serve, args, profile)
    requests = int(report["requests"])  # type: ignore[call-overload]
    cpu = float(report["process_cpu_s"])  # type: ignore[arg-type]
    print(
        f"{report['rps']:,.0f} req/s; this process {cpu / max(1, requests) * 1e6:.1f} µs CPU "
        f"per request under the profiler (the warm-up second included)"
    )
    stats = pstats.Stats(profile, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
