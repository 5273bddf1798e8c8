"""WebSocket benchmark: trioserver's WebSocket transport beside a bare trio + wsproto echo.

    python benchmarks/websocket_bench.py                    # 3 runs x 3 s per case (~2 min)
    python benchmarks/websocket_bench.py --runs 1 --seconds 2

Cases: ping 100x16 and 100x1 (100 connections, 16 or 1 pings outstanding each), each
ping its own masked binary message as a browser sends it, against

- ``bare-trio-ws``: ``baselines/bare_ws.py``, trio + wsproto handling the same packets;
- ``trioserver-ws``: trioserver's HTTP port, ``GET /ws``;
- ``trioserver-tcp``: trioserver's TCP port with the same client in plain TCP, for the
  price of WebSocket inside trioserver.

Servers run pinned to CPU 0, the load generator (``ws_loadgen.c``, C, built here) to
CPU 1; targets are interleaved run by run. What to compare is pings per server
CPU-second and its ratios within one run (see benchmarks/README.md). Load goes to
127.0.0.1 only; every process is stopped by its own PID.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as suite  # the suite's process helpers: pinning, stop by PID

BENCH = suite.BENCH
LOADGEN_SRC = BENCH / "ws_loadgen.c"
LOADGEN = BENCH / "build" / "ws_loadgen"
PY = sys.executable


@dataclass(frozen=True)
class Target:
    name: str
    websocket: bool
    trioserver: bool

    def command(self, port: int) -> list[str]:
        if not self.trioserver:
            return [PY, str(BENCH / "baselines" / "bare_ws.py"), "--port", str(port)]
        listen = f'["{suite.HOST}:{port}"]'
        settings = [
            "master.workers=1",
            "accounts.url=memory:",
            "connection.flood_check=false",
            "connection.heartbeat=false",
            "server.max_connections=50000",
        ]
        if self.websocket:
            settings += ["server.listen=[]", f"http.listen={listen}"]
        else:
            settings += [f"server.listen={listen}", "http.listen=[]"]
        return [PY, "-m", "trioserver", "serve", *[a for s in settings for a in ("--set", s)]]


BARE_WS = Target("bare-trio-ws", websocket=True, trioserver=False)
TRIO_WS = Target("trioserver-ws", websocket=True, trioserver=True)
TRIO_TCP = Target("trioserver-tcp", websocket=False, trioserver=True)
TARGETS = (BARE_WS, TRIO_WS, TRIO_TCP)


@dataclass(frozen=True)
class Case:
    name: str
    conns: int
    depth: int


CASES = (Case("ws-ping-100x16", 100, 16), Case("ws-ping-100x1", 100, 1))


def build() -> None:
    LOADGEN.parent.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        sys.exit("no C compiler found (needed for benchmarks/ws_loadgen.c)")
    argv = [cc, "-O2", "-Wall", "-Wextra", "-o", str(LOADGEN), str(LOADGEN_SRC)]
    subprocess.run(argv, check=True, timeout=120)


def start(target: Target, logdir: Path) -> tuple[Any, int, int]:
    """Start ``target`` on CPU 0; (process, port, the PID doing the work)."""
    port = suite.free_port()
    log = open(logdir / f"{target.name}-{port}.log", "wb")  # noqa: SIM115 (closed with the run)
    proc = subprocess.Popen(
        suite.pinned(suite.SERVER_CPU, target.command(port)),
        cwd=suite.ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    suite.STARTED[proc.pid] = proc
    if not suite.wait_for_port(port, proc, 15.0):
        suite.stop(proc)
        raise RuntimeError(f"{target.name} did not start (log: {log.name})")
    worker = suite.worker_pids(proc.pid)[0] if target.trioserver else proc.pid
    return proc, port, worker


def run_case(case: Case, target: Target, port: int, pid: int, cfg: argparse.Namespace) -> dict:
    args = ["-p", str(port), "-S", str(pid), "-w", str(cfg.warmup), "-t", str(cfg.seconds)]
    args += ["-c", str(case.conns), "-d", str(case.depth)]
    if not target.websocket:
        args.append("-P")
    argv = suite.pinned(suite.LOAD_CPU, [str(LOADGEN), *args])
    timeout = cfg.warmup + cfg.seconds + 60
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ws_loadgen exited {done.returncode}: {done.stderr.strip()}")
    record: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--cases", nargs="*", help="case names (default: all)")
    cfg = parser.parse_args(argv)
    machine = suite.machine_info(suite.raise_nofile())
    build()
    print(json.dumps(machine))
    cases = [c for c in CASES if not cfg.cases or c.name in cfg.cases]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    work = Path(tempfile.mkdtemp(prefix="ws-bench-"))
    print(f"scratch and server logs: {work}")
    try:
        for case in cases:
            for rep in range(cfg.runs):
                for target in TARGETS:
                    proc, port, pid = start(target, work)
                    try:
                        record = run_case(case, target, port, pid, cfg)
                    finally:
                        suite.stop(proc)
                    results.setdefault(case.name, {}).setdefault(target.name, []).append(record)
                    print(
                        f"{case.name} run {rep + 1} {target.name}: {record['rps']:.0f}/s, "
                        f"{record['per_cpu_s']:.0f} per CPU-s",
                        flush=True,
                    )
    finally:
        suite.stop_all()
    report(results)
    out = suite.RESULTS / f"websocket-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    doc = {"results": results, "git": suite.git_state(), "machine": machine}
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}")
    suite.draw_charts(out)
    return 0


def report(results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    def med(case: str, target: str, key: str) -> float | None:
        runs = results.get(case, {}).get(target, [])
        values = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    print("\n| case | target | pings/s | per CPU-s | vs bare-trio-ws | vs trioserver-tcp |")
    print("|---|---|---|---|---|---|")
    for case in results:
        bare = med(case, BARE_WS.name, "per_cpu_s")
        tcp = med(case, TRIO_TCP.name, "per_cpu_s")
        for target in results[case]:
            rps, per = med(case, target, "rps"), med(case, target, "per_cpu_s")
            vs_bare = f"{per / bare:.2f}" if per and bare and target == TRIO_WS.name else ""
            vs_tcp = f"{per / tcp:.2f}" if per and tcp and target == TRIO_WS.name else ""
            print(f"| {case} | {target} | {rps:.0f} | {per:.0f} | {vs_bare} | {vs_tcp} |")


if __name__ == "__main__":
    sys.exit(main())
