"""TLS benchmark: trioserver's TLS port beside a bare trio SSLStream echo, in one run.

    python benchmarks/tls_bench.py                    # 3 runs x 3 s per case (~3 min)
    python benchmarks/tls_bench.py --runs 1 --seconds 2 --idle 1000
    python benchmarks/tls_bench.py --before /tmp/old   # also an older checkout's TLS worker

Cases: ping 100x16 and 100x1 over TLS (and trioserver in plaintext with the same
client, for its own plaintext figure), handshakes per second (a new connection, its
handshake, one ping, close), full and resumed (each connection offers the TLS 1.3
session ticket the previous one got), and the memory per idle TLS connection. Servers run
pinned to CPU 0, the load generator (``tls_loadgen.c``, C with OpenSSL, built here)
to CPU 1; targets are interleaved run by run. What to compare is requests per
server CPU-second, and its ratios within one run (see benchmarks/README.md).
With ``--before DIR`` (a checkout, e.g. ``git archive COMMIT | tar -x -C DIR``) the TLS
cases also run ``trioserver-tls-before``: the same command with DIR first on the Python
path, so a change is measured against the code before it in the same run.
Load goes to 127.0.0.1 only; every process is stopped by its own PID.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as suite  # noqa: E402  (the suite's process helpers: pinning, stop by PID)

BENCH = suite.BENCH
LOADGEN_SRC = BENCH / "tls_loadgen.c"
LOADGEN = BENCH / "build" / "tls_loadgen"
PY = sys.executable


@dataclass(frozen=True)
class Target:
    name: str
    tls: bool
    trioserver: bool
    #: A checkout to import trioserver from instead of this one (``--before``).
    root: Path | None = None

    def command(self, port: int, cert: Path, key: Path) -> list[str]:
        if not self.trioserver:
            argv = [PY, str(BENCH / "baselines" / "bare_trio.py"), "--port", str(port)]
            return argv + (["--certfile", str(cert), "--keyfile", str(key)] if self.tls else [])
        listen = f'["{suite.HOST}:{port}"]'
        settings = [
            "master.workers=1",
            "accounts.url=memory:",
            "http.listen=[]",
            "connection.flood_check=false",
            "connection.heartbeat=false",
            "server.max_connections=50000",
        ]
        if self.tls:
            settings += [
                "server.listen=[]",
                f"server.tls_listen={listen}",
                f'tls.certificate="{cert}"',
                f'tls.private_key="{key}"',
            ]
        else:
            settings.append(f"server.listen={listen}")
        return [PY, "-m", "trioserver", "serve", *[a for s in settings for a in ("--set", s)]]


BARE_TLS = Target("bare-trio-tls", tls=True, trioserver=False)
TRIO_TLS = Target("trioserver-tls", tls=True, trioserver=True)
TRIO_PLAIN = Target("trioserver", tls=False, trioserver=True)


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "load", "handshakes", "idle"
    targets: tuple[Target, ...]
    conns: int = 100
    depth: int = 1
    #: Handshakes: offer the previous connection's session ticket (``tls_loadgen -R``).
    resume: bool = False


CASES = (
    Case("tls-ping-100x16", "load", (BARE_TLS, TRIO_TLS, TRIO_PLAIN), 100, 16),
    Case("tls-ping-100x1", "load", (BARE_TLS, TRIO_TLS, TRIO_PLAIN), 100, 1),
    Case("tls-handshakes", "handshakes", (BARE_TLS, TRIO_TLS), conns=4),
    Case("tls-handshakes-resumed", "handshakes", (BARE_TLS, TRIO_TLS), conns=4, resume=True),
    Case("tls-idle", "idle", (BARE_TLS, TRIO_TLS)),
)


def build() -> None:
    LOADGEN.parent.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        sys.exit("no C compiler found (needed for benchmarks/tls_loadgen.c)")
    argv = [cc, "-O2", "-Wall", "-Wextra", "-o", str(LOADGEN), str(LOADGEN_SRC)]
    subprocess.run([*argv, "-lssl", "-lcrypto", "-lpthread"], check=True, timeout=120)


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for localhost (the load generator does not
    verify, so no CA is needed; the server's signing cost is a real one)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key),
            "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


def start(target: Target, cert: Path, key: Path, logdir: Path) -> tuple[Any, int, int]:
    """Start ``target`` on CPU 0; (process, port, the PID doing the work)."""
    port = suite.free_port()
    log = open(logdir / f"{target.name}-{port}.log", "wb")  # noqa: SIM115 (closed with the run)
    env = None if target.root is None else {**os.environ, "PYTHONPATH": str(target.root)}
    proc = subprocess.Popen(
        suite.pinned(suite.SERVER_CPU, target.command(port, cert, key)),
        cwd=target.root or suite.ROOT,
        env=env,
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


def loadgen(args: Sequence[str], timeout: float) -> dict[str, Any]:
    argv = suite.pinned(suite.LOAD_CPU, [str(LOADGEN), *args])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"tls_loadgen exited {done.returncode}: {done.stderr.strip()}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def run_case(case: Case, target: Target, port: int, pid: int, cfg: argparse.Namespace) -> dict:
    plain = [] if target.tls else ["-P"]
    common = ["-p", str(port), "-S", str(pid), "-w", str(cfg.warmup), "-t", str(cfg.seconds)]
    if case.kind == "load":
        args = [*common, "-c", str(case.conns), "-d", str(case.depth), *plain]
        return loadgen(args, cfg.warmup + cfg.seconds + 60)
    if case.kind == "handshakes":
        resume = ["-R"] if case.resume else []
        return loadgen(
            [*common, "-H", "-c", str(case.conns), *resume, *plain], cfg.warmup + cfg.seconds + 60
        )
    before = suite.rss_kib(pid)
    argv = suite.pinned(
        suite.LOAD_CPU, [str(LOADGEN), "-p", str(port), "-i", "-c", str(cfg.idle), "-t", "2"]
    )
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        if not ready or proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the idle connections were not all opened within 120 s")
        held = suite.rss_kib(pid)
        report: dict[str, Any] = json.loads(proc.stdout.readline())
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    report.update(
        rss_before_kib=before,
        rss_idle_kib=held,
        kib_per_conn=(held - before) / cfg.idle,
        requests=cfg.idle,
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--idle", type=int, default=2000, help="idle TLS connections to hold")
    parser.add_argument("--cases", nargs="*", help="case names (default: all)")
    parser.add_argument("--before", type=Path, help="also run this checkout's TLS worker")
    parser.add_argument("--report", type=Path, help="print the tables of a saved result file")
    cfg = parser.parse_args(argv)
    if cfg.report is not None:
        report(json.loads(cfg.report.read_text())["results"])
        return 0
    machine = suite.machine_info(suite.raise_nofile())
    build()
    cases = [c for c in CASES if not cfg.cases or c.name in cfg.cases]
    if cfg.before is not None:
        before = Target("trioserver-tls-before", tls=True, trioserver=True, root=cfg.before)
        cases = [replace(c, targets=(*c.targets[:2], before, *c.targets[2:])) for c in cases]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    work = Path(tempfile.mkdtemp(prefix="tls-bench-"))
    print(f"scratch and server logs: {work}")
    cert, key = make_certificate(work)
    try:
        for case in cases:
            for rep in range(cfg.runs):
                for target in case.targets:
                    proc, port, pid = start(target, cert, key, work)
                    try:
                        record = run_case(case, target, port, pid, cfg)
                    finally:
                        suite.stop(proc)
                    results.setdefault(case.name, {}).setdefault(target.name, []).append(record)
                    shown = (
                        f"{record['kib_per_conn']:.1f} KiB/conn"
                        if case.kind == "idle"
                        else f"{record['rps']:.0f}/s, {record['per_cpu_s']:.0f} per CPU-s"
                    )
                    if case.resume:
                        shown += f" ({record['resumed']} of {record['requests']} resumed)"
                    print(f"{case.name} run {rep + 1} {target.name}: {shown}", flush=True)
    finally:
        suite.stop_all()
    report(results)
    out = suite.RESULTS / f"tls-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    doc = {"results": results, "git": suite.git_state(), "machine": machine}
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}")
    suite.draw_charts(out)
    return 0


def report(results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    """Medians; and, because the targets of one run ran side by side, the median of each
    run's own ratio to the bare baseline (robust to a neighbour that slowed one run)."""

    def med(case: str, target: str, key: str) -> float | None:
        runs = results.get(case, {}).get(target, [])
        values = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    def paired(case: str, target: str) -> float | None:
        pairs = zip(
            results[case].get(target, []), results[case].get(BARE_TLS.name, []), strict=False
        )
        ratios = [r["per_cpu_s"] / b["per_cpu_s"] for r, b in pairs if b.get("per_cpu_s")]
        return statistics.median(ratios) if ratios else None

    print(
        "\n| case | target | req/s | per CPU-s | vs bare-trio-tls | "
        "vs bare, median of runs' ratios | vs trioserver plaintext |"
    )
    print("|---|---|---|---|---|---|---|")
    for case in results:
        if case == "tls-idle":
            continue
        bare = med(case, BARE_TLS.name, "per_cpu_s")
        plain = med(case, TRIO_PLAIN.name, "per_cpu_s")
        for target in results[case]:
            rps, per = med(case, target, "rps"), med(case, target, "per_cpu_s")
            vs_bare = pair = ""
            if per and bare and target != BARE_TLS.name:
                vs_bare = f"{per / bare:.2f}"
                pair = f"{paired(case, target) or 0:.2f}"
            tls_worker = target in (TRIO_TLS.name, "trioserver-tls-before")
            vs_plain = f"{per / plain:.2f}" if per and plain and tls_worker else ""
            print(
                f"| {case} | {target} | {rps:.0f} | {per:.0f} | {vs_bare} | {pair} | {vs_plain} |"
            )
    if "tls-idle" in results:
        print("\n| idle TLS connections | KiB per connection |\n|---|---|")
        for target in results["tls-idle"]:
            print(f"| {target} | {med('tls-idle', target, 'kib_per_conn'):.1f} |")


if __name__ == "__main__":
    sys.exit(main())
