"""A reconnect storm: 10,000 clients that logged in before a restart come back at once.

    python benchmarks/resume_storm.py                        # 10,000 clients, SQLite store
    python benchmarks/resume_storm.py --clients 2000 --scrypt-seconds 10
    python benchmarks/resume_storm.py --profile storm.prof   # the worker under cProfile

One worker (``master.workers=1``) pinned to CPU 0, the C load generator
(``loadgen -s``) pinned to CPU 1, 127.0.0.1 only, every phase bounded in time:

1. Accounts: ``--clients`` accounts with a fast hash written straight into the
   SQLite store (group commits), and as many with one real scrypt hash (N=16384,
   the default; the same hash string for all, which costs the same to verify).
2. Before the restart: a server starts, every client logs in over a real
   connection (50 at a time) and keeps its session token; the server stops.
3. The storm: a new server (same data directory, same session secret) starts;
   all clients connect at once and send RESUME with their saved token as soon as
   their connection is up. Measured: from the first connect to the last answer,
   how many were OK, the worker's CPU, the load generator's CPU. Before each, the
   same storm with a ping instead of a resume on another fresh server: the floor
   (accepting 10,000 connections and answering one packet on each).
4. The same storm with scrypt logins instead (server hash=scrypt), bounded to
   ``--scrypt-seconds``: with the bounded hash line most are answered 'busy'
   (5) at once, so also the sustained scrypt login rate (2 connections, one login
   each outstanding), and from it the time 10,000 logins need (extrapolated).

Benchmark-only settings, said so: no flood rule, heartbeat off, limits per
network off (every client is 127.0.0.1), ``server.max_connections`` and
``server.backlog`` raised to take 10,000 at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import trio

from trioserver.accounts.passwords import InsecureFastHasher, ScryptHasher
from trioserver.accounts.sqlite import SQLiteStore
from trioserver.accounts.store import Account
from trioserver.client import Client
from trioserver.messages import USERNAME_FIELD, ResultCode

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LOADGEN = BENCH / "build" / "loadgen"
PASSWORD = "benchpass"  # what the load generator's logins send
FAST, SLOW = "fast_", "scrypt_"


#: Extra ``--set`` arguments for every server (``--set KEY=VALUE`` on this script).
EXTRA: list[str] = []


def settings(port: int, clients: int, hash_name: str) -> list[str]:
    values = {
        "master.workers": "1",
        "master.pidfile": '""',
        "server.listen": f'["127.0.0.1:{port}"]',
        "http.listen": "[]",
        "server.max_connections": str(clients + 100),
        "server.backlog": "4096",
        "connection.flood_check": "false",
        "connection.heartbeat": "false",
        "accounts.hash": f'"{hash_name}"',
        "accounts.max_failures_per_address": "0",
        "accounts.max_failures_per_name": "0",
        "accounts.max_failures_per_name_untrusted": "0",
        "logging.level": '"warning"',
    }
    pairs = [f"{key}={value}" for key, value in values.items()] + EXTRA
    return [arg for pair in pairs for arg in ("--set", pair)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)  # polling a port another process opens: nothing to wait on
    sys.exit(f"the server did not listen on {port} within {timeout} s")


@contextlib.contextmanager
def server(
    workdir: Path, clients: int, hash_name: str, profile: Path | None = None
) -> Iterator[tuple[int, int]]:
    """A server in ``workdir`` on CPU 0; yields (port, the worker's pid)."""
    port = free_port()
    if profile is None:
        argv = [sys.executable, "-m", "trioserver", "serve", *settings(port, clients, hash_name)]
    else:  # the worker alone (no master), under cProfile; it writes the stats when stopped
        argv = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "trioserver",
                "serve", "--no-master", *settings(port, clients, hash_name)]  # fmt: skip
    if shutil.which("taskset"):
        argv = ["taskset", "-c", "0", *argv]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(workdir / "server.log", "ab") as log:
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=log, stderr=log)
    try:
        wait_port(port, proc)
        worker = proc.pid
        if profile is None:
            deadline = time.monotonic() + 10
            while not children(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            worker = children(proc.pid)[0]
        yield port, worker
    finally:
        proc.send_signal(signal.SIGINT if profile is not None else signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def loadgen(args: Sequence[str], timeout: float) -> dict[str, Any]:
    argv = [str(LOADGEN), *args, "-j"]
    if shutil.which("taskset"):
        argv = ["taskset", "-c", "1", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        sys.exit(f"loadgen failed ({out.returncode}): {out.stderr.strip()}")
    report: dict[str, Any] = json.loads(out.stdout)
    return report


async def make_accounts(path: Path, clients: int) -> None:
    store = SQLiteStore(path)
    fast = InsecureFastHasher().hash(PASSWORD.encode())
    slow = ScryptHasher().hash(PASSWORD.encode())
    try:
        async with trio.open_nursery() as nursery:
            for prefix, stored in ((FAST, fast), (SLOW, slow)):
                for i in range(clients):
                    # the load generator's login names: PREFIX + "u" + index
                    account = Account(f"{prefix}u{i}", f"{prefix}u{i}", stored)
                    nursery.start_soon(store.create, account)
    finally:
        await store.aclose()


async def log_everyone_in(port: int, clients: int) -> bytes:
    """Every fast account logs in; their resume records (name field + token)."""
    records: list[bytes] = [b""] * clients
    next_index = iter(range(clients))

    async def one_connection() -> None:
        async with await Client.connect("127.0.0.1", port) as client:
            for i in next_index:
                name = f"{FAST}u{i}"
                reply = await client.login(name, PASSWORD)
                if reply.result != ResultCode.OK:
                    raise RuntimeError(f"login {name}: result {reply.result}")
                records[i] = name.encode().ljust(USERNAME_FIELD, b"\0") + reply.token

    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(one_connection)
    return b"".join(records)


def storm_line(what: str, report: dict[str, Any], clients: int) -> str:
    codes = {k: v for k, v in report["result_codes"].items() if v}
    cpu = report["server_cpu_s"]
    latency = report["latency_us"]
    return (
        f"{what}: {report['connected']:,} of {clients:,} connected in {report['connect_s']:.2f} s, "
        f"all answered {report['duration_s']:.2f} s after the first connect; "
        f"result codes {codes}; errors {report['errors']}; worker CPU {cpu:.2f} s "
        f"({cpu / max(1, report['requests']) * 1e6:.0f} us per request); "
        f"load generator CPU {report['loadgen_cpu_pct']:.0f} % of its core; "
        f"p50 {latency['p50'] / 1000:.0f} ms, p99 {latency['p99'] / 1000:.0f} ms "
        "from connected to answered"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--scrypt-seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3, help="resume storms (a restart each)")
    parser.add_argument("--profile", type=Path, help="run the first resume storm's worker "
                        "under cProfile and write its stats here")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every server started (repeatable)")  # fmt: skip
    parser.add_argument("--no-scrypt", action="store_true", help="skip the scrypt storm")
    args = parser.parse_args(argv)
    EXTRA.extend(args.set)
    if not LOADGEN.exists():
        sys.exit("build the load generator first: python benchmarks/run.py --list builds it, or "
                 "cc -O2 -o benchmarks/build/loadgen benchmarks/loadgen.c")  # fmt: skip
    print(
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    clients = args.clients
    with tempfile.TemporaryDirectory(prefix="resume-storm-") as tmp:
        workdir = Path(tmp)
        start = time.perf_counter()
        trio.run(make_accounts, workdir / "data" / "accounts.sqlite3", clients)
        print(f"accounts: {2 * clients:,} written in {time.perf_counter() - start:.1f} s")
        tokens = workdir / "tokens.bin"
        with server(workdir, clients, "insecure-fast") as (port, _):
            start = time.perf_counter()
            tokens.write_bytes(trio.run(log_everyone_in, port, clients))
            print(f"before the restart: {clients:,} logins in {time.perf_counter() - start:.1f} s")
        for run in range(args.runs):  # a fresh server (a restart) for every storm
            with server(workdir, clients, "insecure-fast") as (port, worker):
                report = loadgen(
                    ["-p", str(port), "-s", "-c", str(clients), "-m", "ping",
                     "-S", str(worker), "-T", "60", "-t", "60"],
                    timeout=150,
                )  # fmt: skip
            print(storm_line(f"ping storm {run + 1} (the floor)", report, clients))
            profile = args.profile if run == 0 else None
            with server(workdir, clients, "insecure-fast", profile) as (port, worker):
                report = loadgen(
                    ["-p", str(port), "-s", "-c", str(clients), "-m", "resume", "-R", str(tokens),
                     "-S", str(worker), "-T", "60", "-t", "60"],
                    timeout=150,
                )  # fmt: skip
            label = f"resume storm {run + 1}" + (" (under cProfile)" if profile else "")
            print(storm_line(label, report, clients))
        if args.profile:
            stats = pstats.Stats(str(args.profile))
            stats.sort_stats("tottime").print_stats(25)
        if args.no_scrypt:
            return
        with server(workdir, clients, "scrypt") as (port, worker):
            report = loadgen(
                ["-p", str(port), "-s", "-c", str(clients), "-m", "login", "-u", SLOW,
                 "-n", str(clients), "-S", str(worker), "-T", "60",
                 "-t", str(args.scrypt_seconds)],
                timeout=args.scrypt_seconds + 120,
            )  # fmt: skip
            print(storm_line("scrypt login storm", report, clients))
            steady = loadgen(
                ["-p", str(port), "-c", "2", "-d", "1", "-m", "login", "-u", SLOW,
                 "-n", str(clients), "-S", str(worker), "-w", "1",
                 "-t", str(args.scrypt_seconds)],
                timeout=args.scrypt_seconds + 60,
            )  # fmt: skip
        ok = steady["result_codes"]["0"]
        rate = ok / steady["duration_s"]
        print(
            f"scrypt logins, sustained (2 connections x 1): {rate:.1f} OK/s "
            f"(result codes { {k: v for k, v in steady['result_codes'].items() if v} }, "
            f"worker CPU {steady['server_cpu_pct']:.0f} %); {clients:,} clients logging in "
            f"again with passwords would need at least {clients / rate:.0f} s "
            f"({clients / rate / 60:.1f} min), retrying each 'busy' (extrapolated)"
        )


if __name__ == "__main__":
    main()
