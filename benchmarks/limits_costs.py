"""What the shared login limits cost per attempt: accounts.shared_limits on against off.

    python benchmarks/limits_costs.py                      # SQLite, 5 rounds of 2,000 each
    python benchmarks/limits_costs.py --postgres postgresql://user@127.0.0.1:5432/db
    python benchmarks/limits_costs.py --postgres temp     # a throwaway server (initdb)

The account service alone (no sockets), over a real store in a temporary
directory (or the PostgreSQL database given), insecure-fast hash, limits high
enough that nothing is refused. Per attempt: CPU seconds of the whole process
(event loop and store threads) and wall time, for a successful login, a failed
login (each one writes its failure), and a resume, one attempt at a time.
Rounds interleave on and off, so machine noise falls on both alike; medians.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import attrs
import trio

from trioserver.accounts import AccountService
from trioserver.config import Config
from trioserver.messages import ResultCode

KINDS = ("login ok", "login failed", "resume ok")


def service_for(url: str, shared: bool) -> AccountService:
    config = Config().replace(
        accounts__url=url,
        accounts__hash="insecure-fast",
        accounts__max_failures_per_name=1_000_000,
        accounts__max_failures_per_address=1_000_000,
        accounts__max_failures_per_name_untrusted=1_000_000,
        accounts__max_registrations_per_address=0,
        accounts__shared_limits=shared,
    )
    return attrs.evolve(AccountService.from_settings(config.accounts), session_key=b"k" * 32)


async def one_round(url: str, shared: bool, n: int, users: int) -> dict[str, tuple[float, float]]:
    service = service_for(url, shared)
    await service.open()
    out: dict[str, tuple[float, float]] = {}
    try:
        tokens = []
        for u in range(users):  # idempotent: a later round finds them taken
            await service.register(f"user{u}".encode(), b"secret", 0, "10.0.0.1:1")
            result = await service.login(f"user{u}".encode(), b"secret", "10.0.0.1:1")
            assert result.code == ResultCode.OK, result
            tokens.append(result.token)
        for kind in KINDS:
            cpu, wall = time.process_time(), time.perf_counter()
            for i in range(n):
                u = i % users
                name = f"user{u}".encode()
                peer = f"10.1.{i % 200}.{i // 200 % 250}:1"
                if kind == "login ok":
                    code = (await service.login(name, b"secret", peer)).code
                elif kind == "login failed":
                    code = (await service.login(name, b"wrong", peer)).code
                else:
                    code = (await service.resume(name, tokens[u], peer)).code
                want = ResultCode.REJECTED if kind == "login failed" else ResultCode.OK
                assert code == want, (kind, code)
            out[kind] = ((time.process_time() - cpu) / n, (time.perf_counter() - wall) / n)
    finally:
        await service.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--attempts", type=int, default=2000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--postgres", help="a PostgreSQL URL to measure as well")
    args = parser.parse_args()
    print(
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}"
    )
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        urls = {"sqlite": f"sqlite:///{Path(tmp) / 'accounts.sqlite3'}"}
        if args.postgres == "temp":  # the tests' throwaway cluster, on loopback
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from tests.accounts.pgserver import PostgresServer

            pg = PostgresServer.create()
            stack.callback(pg.destroy)
            urls["postgres"] = pg.url
        elif args.postgres:
            urls["postgres"] = args.postgres
        for store, url in urls.items():
            rows: dict[tuple[str, bool], list[tuple[float, float]]] = {}
            for _ in range(args.rounds):
                for shared in (False, True):
                    result = trio.run(one_round, url, shared, args.attempts, args.users)
                    for kind, value in result.items():
                        rows.setdefault((kind, shared), []).append(value)
            print(f"\n{store}: per attempt, medians of {args.rounds} rounds of {args.attempts}")
            print(f"{'':>14} {'off CPU us':>11} {'on CPU us':>10} {'off wall us':>12} "
                  f"{'on wall us':>11}")  # fmt: skip
            for kind in KINDS:
                off = rows[(kind, False)]
                on = rows[(kind, True)]
                cells = [
                    statistics.median(v[i] for v in values) * 1e6
                    for i in (0,)
                    for values in (off, on)
                ] + [statistics.median(v[1] for v in values) * 1e6 for values in (off, on)]
                print(f"{kind:>14} {cells[0]:11.1f} {cells[1]:10.1f} {cells[2]:12.1f} "
                      f"{cells[3]:11.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
