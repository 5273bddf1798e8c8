"""Run the binary-protocol benchmark suite: servers side by side, medians and ratios.

    python benchmarks/run.py                     # every case, 3 runs of 10 s after 2 s warm-up
    python benchmarks/run.py --quick             # 1 run of 3 s per case
    python benchmarks/run.py --cases ping-100x16 idle-10k --targets bare-trio uvloop
    python benchmarks/run.py --list

Each server runs pinned to CPU 0 (``taskset -c 0``), the C load generator
(``benchmarks/loadgen.c``, built here with the system compiler) pinned to CPU 1.
Runs are interleaved (case by case, run by run, target by target) so that noise
from a shared machine falls on every target alike; what to trust is the ratios.
Everything talks to 127.0.0.1 only, every run is bounded in time, and every
process started here is stopped by its own PID.

Results: a progress line per run, a table of medians and ratios at the end, and
``benchmarks/results/<timestamp>.json`` with every run and the machine.

Adding a target: one entry in ``TARGETS``. Adding a case: one entry in ``CASES``; a
case of a new kind also needs a runner in ``RUNNERS`` (the "workers" and "http"
kinds are declared but have none yet).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LOADGEN_SRC = BENCH / "loadgen.c"
LOADGEN = BENCH / "build" / "loadgen"
RESULTS = BENCH / "results"
HOST = "127.0.0.1"  # the only address load is ever sent to
SERVER_CPU = "0"
LOAD_CPU = "1"
PY = sys.executable
LOGIN_USERS = 1000  # accounts registered before a login case; logins cycle through them
ACCOUNT_PREFIX = "bench_"
# Opening 20,000 connections to a server that accepts slowly overflows its accept queue;
# the kernel's SYN retries (up to ~127 s) then get them in, so connecting may take a while.
IDLE_CONNECT_TIMEOUT = 150.0

# ---------------------------------------------------------------------------
# Targets: the servers under test. Strings in commands are formatted with
# {python}, {port}, {host}, {conns}.


@dataclass(frozen=True)
class Target:
    name: str
    command: tuple[str, ...]
    # Extra arguments for cases carrying a tag ("accounts", "idle"), same formatting.
    tag_args: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # A command that must exit 0 (within 20 s) for the target to be runnable at all.
    probe: tuple[str, ...] | None = None
    # Check that account setup really created accounts (result code 0); baselines
    # answer any register/login with a fixed reply, so for them there is nothing to check.
    checks_accounts: bool = False
    # The command starts a master that forks workers: measure the workers, not it.
    forks_workers: bool = False
    description: str = ""


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "bare-trio",
            (
                "{python}",
                str(BENCH / "baselines" / "bare_trio.py"),
                "--host",
                "{host}",
                "--port",
                "{port}",
            ),
            description="trio, one task per connection, parse all, one send per receive",
        ),
        Target(
            "uvloop",
            (
                "{python}",
                str(BENCH / "baselines" / "uvloop_server.py"),
                "--host",
                "{host}",
                "--port",
                "{port}",
            ),
            description="asyncio + uvloop, hand-written Protocol",
        ),
        Target(
            "trioserver",
            (
                "{python}",
                "-m",
                "trioserver",
                "serve",
                "--set",
                'server.listen=["{host}:{port}"]',
                "--set",
                "connection.flood_check=false",
                "--set",
                "connection.heartbeat=false",
            ),
            tag_args={
                # Benchmark-only settings, said so: an in-memory store, the cheap hash,
                # and no per-address limits (every benchmark client shares 127.0.0.1).
                "accounts": (
                    "--set",
                    "accounts.url=memory:",
                    "--set",
                    "accounts.hash=insecure-fast",
                    "--set",
                    "accounts.max_registrations_per_address=0",
                    "--set",
                    "accounts.max_failures_per_address=0",
                    "--set",
                    "accounts.max_failures_per_name=0",
                ),
                "idle": ("--set", "server.max_connections={conns}"),
            },
            probe=("{python}", "-m", "trioserver", "serve", "--help"),
            checks_accounts=True,
            forks_workers=True,
            description="python -m trioserver serve, master + 1 worker (the worker is measured), "
            "flood rule and heartbeat off",
        ),
    )
}

# Ratios printed for every case (numerator, denominator), when both ran.
RATIOS: tuple[tuple[str, str], ...] = (
    ("trioserver", "bare-trio"),
    ("trioserver", "uvloop"),
    ("bare-trio", "uvloop"),
)

# ---------------------------------------------------------------------------
# Cases.

Kind = Literal["load", "idle", "workers", "http"]


@dataclass(frozen=True)
class Case:
    name: str
    kind: Kind
    help: str
    mix: str = "ping"
    conns: int = 1
    depth: int = 1
    tags: frozenset[str] = frozenset()
    fresh_server_per_run: bool = False  # idle: RSS deltas need a server that has done nothing


CASES: tuple[Case, ...] = (
    Case("ping-1x1", "load", "1 connection, 1 ping outstanding: latency", conns=1, depth=1),
    Case("ping-100x1", "load", "100 connections, 1 ping outstanding each", conns=100, depth=1),
    Case("ping-100x16", "load", "100 connections, 16 pings pipelined each", conns=100, depth=16),
    Case("ping-1000x1", "load", "1000 connections, 1 ping outstanding each", conns=1000),
    Case(
        "register-100x16",
        "load",
        "register (code 5), unique names, 100x16",
        mix="register",
        conns=100,
        depth=16,
        tags=frozenset({"accounts"}),
    ),
    Case(
        "login-100x16",
        "load",
        f"login (code 6) over {LOGIN_USERS} registered accounts, 100x16",
        mix="login",
        conns=100,
        depth=16,
        tags=frozenset({"accounts", "login"}),
    ),
    Case(
        "idle-10k",
        "idle",
        "10,000 idle connections: server RSS per connection, then a ping on each",
        conns=10_000,
        tags=frozenset({"idle"}),
        fresh_server_per_run=True,
    ),
    Case(
        "idle-20k",
        "idle",
        "20,000 idle connections (capped by RLIMIT_NOFILE): RSS per "
        "connection, then a ping on each",
        conns=20_000,
        tags=frozenset({"idle"}),
        fresh_server_per_run=True,
    ),
    # Declared for later (no runner yet): see RUNNERS.
    Case(
        "ping-100x16-2workers",
        "workers",
        "trioserver master.workers=2 against 1 (planned)",
        conns=100,
        depth=16,
    ),
    Case(
        "http-keepalive",
        "http",
        "wrk -t1 -c100 against trioserver and nginx (planned; see benchmarks/http_bench.py)",
    ),
)


@dataclass(frozen=True)
class Settings:
    runs: int
    duration: float
    warmup: float
    idle_hold: float
    connect_timeout: float


# ---------------------------------------------------------------------------
# Processes.


def raise_nofile() -> int:
    """Raise our soft RLIMIT_NOFILE to the hard limit (children inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pinned(cpu: str, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if shutil.which("taskset") else list(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll connect() until the port accepts, the process dies, or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket() as s:
            s.settimeout(0.5)
            try:
                s.connect((HOST, port))
                return True
            except OSError:
                pass
        time.sleep(0.05)
    return False


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM this one process, then SIGKILL it if it has not gone after `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Server:
    target: Target
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    measured: tuple[int, ...] = ()  # the processes doing the work: the workers, if any

    @property
    def pids_arg(self) -> str:
        return ",".join(str(p) for p in self.measured or (self.proc.pid,))

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join("    | " + line for line in text[-lines:])


def children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def worker_pids(pid: int, settle: float = 2.0) -> tuple[int, ...]:
    """The leaf processes under `pid` (a master's workers), or `pid` itself if it has none.

    The CPU, RSS and fds that matter are the workers'; a master only supervises.
    """
    deadline = time.monotonic() + settle
    leaves: list[int] = []
    while True:
        leaves = []
        todo = [pid]
        while todo:
            p = todo.pop()
            kids = children(p)
            if kids:
                todo += kids
            elif p != pid:
                leaves.append(p)
        if leaves or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return tuple(sorted(leaves)) or (pid,)


def server_alive(server: Server) -> bool:
    """The server process and every measured worker still run (zombies count as dead)."""
    if server.proc.poll() is not None:
        return False
    for pid in server.measured:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
            return False
    return True


def add_note(notes: dict[str, dict[str, str]], case: str, target: str, note: str) -> None:
    old = notes.setdefault(case, {}).get(target)
    if old != note:
        notes[case][target] = f"{old}; {note}" if old else note


def fmt_args(args: Sequence[str], **values: object) -> list[str]:
    return [a.format(**values) for a in args]


def start_server(target: Target, case: Case, logdir: Path, timeout: float) -> Server:
    port = free_port()
    values = {"python": PY, "port": port, "host": HOST, "conns": case.conns + 100}
    argv = fmt_args(target.command, **values)
    for tag in sorted(case.tags):
        argv += fmt_args(target.tag_args.get(tag, ()), **values)
    log = logdir / f"{target.name}-{case.name}-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            pinned(SERVER_CPU, argv),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(target, port, proc, log)
    if not wait_for_port(port, proc, timeout):
        stop(proc)
        raise RuntimeError(
            f"{target.name} did not accept on {HOST}:{port} within {timeout:.0f} s "
            f"(exit code {proc.returncode}); command: {' '.join(argv)}\n{server.log_tail()}"
        )
    if target.forks_workers:
        server.measured = worker_pids(proc.pid, settle=5.0)
    return server


def loadgen(args: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run the load generator on the load CPU; return its JSON report."""
    argv = pinned(LOAD_CPU, [str(LOADGEN), *args, "-j"])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(
            f"loadgen exited {done.returncode}: {' '.join(argv)}\n{done.stderr.strip()}"
        )
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def build_loadgen() -> None:
    LOADGEN.parent.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        sys.exit("no C compiler (cc/gcc) found: install one to build benchmarks/loadgen.c")
    argv = [cc, "-O2", "-Wall", "-Wextra", "-o", str(LOADGEN), str(LOADGEN_SRC)]
    subprocess.run(argv, check=True, timeout=120)


def probe(target: Target) -> str | None:
    """None if the target can run here, else why not."""
    if target.probe is None:
        return None
    argv = fmt_args(target.probe, python=PY, port=0, host=HOST, conns=0)
    try:
        done = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=20, check=False
        )
    except subprocess.TimeoutExpired:
        return f"`{' '.join(argv)}` did not finish within 20 s"
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
        return f"`{' '.join(argv)}` exited {done.returncode}: {' '.join(last)}"
    return None


# ---------------------------------------------------------------------------
# Runners: one function per case kind, returning a flat record for one run.

Runner = Callable[[Case, Server, Settings, int], dict[str, Any]]


def run_load(case: Case, server: Server, cfg: Settings, rep: int) -> dict[str, Any]:
    args = [
        "-p",
        str(server.port),
        "-c",
        str(case.conns),
        "-d",
        str(case.depth),
        "-t",
        str(cfg.duration),
        "-w",
        str(cfg.warmup),
        "-m",
        case.mix,
        "-S",
        server.pids_arg,
        "-T",
        str(cfg.connect_timeout),
    ]
    if "login" in case.tags:
        args += ["-u", ACCOUNT_PREFIX, "-n", str(LOGIN_USERS)]
    report = loadgen(args, timeout=cfg.warmup + cfg.duration + cfg.connect_timeout + 30)
    requests = report["requests"]
    record: dict[str, Any] = {
        "rps": report["rps"],
        "p50_us": report["latency_us"]["p50"],
        "p99_us": report["latency_us"]["p99"],
        "p999_us": report["latency_us"]["p999"],
        "server_cpu_pct": report["server_cpu_pct"],
        "server_us_per_req": report["server_cpu_s"] / requests * 1e6 if requests else None,
        "loadgen_cpu_pct": report["loadgen_cpu_pct"],
        "errors": report["errors"],
        "loadgen": report,
    }
    if case.mix in ("register", "login") and requests:
        ok = report["result_codes"]["0"]
        record["result_ok_fraction"] = ok / requests
    return record


def run_idle(case: Case, server: Server, cfg: Settings, rep: int) -> dict[str, Any]:
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    conns = min(case.conns, limit - 64)  # both ends need one fd per connection plus a few
    args = [
        "-p",
        str(server.port),
        "-i",
        "-P",
        "-c",
        str(conns),
        "-t",
        str(cfg.idle_hold),
        "-S",
        server.pids_arg,
        "-T",
        str(IDLE_CONNECT_TIMEOUT),
    ]
    report = loadgen(args, timeout=cfg.idle_hold + 2 * IDLE_CONNECT_TIMEOUT + 30)
    idle = report["idle"]
    answered = idle["answered"]
    before, after = idle["server_rss_kib_before"], idle["server_rss_kib_after_ping"]
    return {
        "connections": conns,
        "capped": conns < case.conns,
        "connected": report["connected"],
        "connect_s": report["connect_s"],
        "answered": answered,
        "closed_during_hold": idle["closed_during_hold"],
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "rss_per_conn_kib": (after - before) / answered if answered else None,
        "rss_idle_per_conn_kib": (idle["server_rss_kib_idle"] - before) / answered
        if answered
        else None,
        "ping_p50_us": report["latency_us"]["p50"],
        "errors": report["errors"],
        "loadgen": report,
    }


RUNNERS: dict[Kind, Runner] = {"load": run_load, "idle": run_idle}
# Hooks for later: "workers" (trioserver with master.workers=2 against 1; on 2 cores the
# load generator needs a core too, so say how it was measured) and "http" (wrk against
# nginx and trioserver; see benchmarks/http_bench.py). Add a runner here and the cases run.


def setup_accounts(server: Server, cfg: Settings) -> str | None:
    """Register the accounts a login case uses; None if they exist, else a note."""
    report = loadgen(
        [
            "-p",
            str(server.port),
            "-A",
            "-u",
            ACCOUNT_PREFIX,
            "-n",
            str(LOGIN_USERS),
            "-c",
            "10",
            "-d",
            "8",
            "-t",
            "60",
            "-T",
            str(cfg.connect_timeout),
        ],
        timeout=120,
    )
    ok = report["result_codes"]["0"]
    if server.target.checks_accounts and ok < LOGIN_USERS:
        codes = {k: v for k, v in report["result_codes"].items() if v}
        return (
            f"needs accounts issue: setup registered {ok}/{LOGIN_USERS} "
            f"(result codes {codes}, replies {report['requests']})"
        )
    return None


# ---------------------------------------------------------------------------
# Reporting.


def machine_info(nofile: int) -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    for mod in ("trio", "uvloop"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    cc = subprocess.run(
        [shutil.which("cc") or "cc", "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "packages": versions,
        "cc": cc[0] if cc else "",
        "nofile_limit": nofile,
        "taskset": bool(shutil.which("taskset")),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


SUMMARY_KEYS = {
    "load": (
        "rps",
        "p50_us",
        "p99_us",
        "p999_us",
        "server_cpu_pct",
        "server_us_per_req",
        "loadgen_cpu_pct",
        "errors",
        "result_ok_fraction",
    ),
    "idle": (
        "connections",
        "connect_s",
        "answered",
        "rss_before_mib",
        "rss_after_mib",
        "rss_per_conn_kib",
        "rss_idle_per_conn_kib",
        "ping_p50_us",
        "errors",
    ),
}


def summarise(records: Sequence[dict[str, Any]], kind: Kind) -> dict[str, Any]:
    """Medians over the runs, except errors: their total, so one bad run shows."""
    out: dict[str, Any] = {"runs": len(records)}
    for key in SUMMARY_KEYS.get(kind, ()):
        if key == "errors":
            out[key] = sum(r.get(key) or 0 for r in records)
        else:
            out[key] = median([r.get(key) for r in records])
    return out


def summarise_runs(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    kinds = {c.name: c.kind for c in CASES}
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in records:
        if "connect_s" not in r and "connect_s" in r.get("loadgen", {}):
            r = {**r, "connect_s": r["loadgen"]["connect_s"]}  # files from before the column
        grouped.setdefault(r["case"], {}).setdefault(r["target"], []).append(r)
    return {
        case: {t: summarise(recs, kinds.get(case, "load")) for t, recs in by_target.items()}
        for case, by_target in grouped.items()
    }


def fmt_num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def print_tables(
    summary: dict[str, dict[str, dict[str, Any]]],
    cases: Sequence[Case],
    targets: Sequence[str],
    notes: dict[str, dict[str, str]],
) -> list[str]:
    lines: list[str] = []
    ratio_cols = [(a, b) for a, b in RATIOS if a in targets and b in targets]
    load_cases = [c for c in cases if c.kind == "load" and c.name in summary]
    if load_cases:
        # Two ratios per pair: of req/s, and of requests per server CPU-second (the
        # inverse ratio of server µs/req), which holds up better when the server's
        # core is shared with other work and gets only part of it.
        head = (
            ["case"]
            + [f"{t} req/s" for t in targets]
            + [f"{a}/{b}" for a, b in ratio_cols]
            + [f"{a}/{b} per CPU-s" for a, b in ratio_cols]
        )
        rows = []
        for c in load_cases:
            s = summary[c.name]
            row = [c.name] + [fmt_num(s.get(t, {}).get("rps")) for t in targets]
            for a, b in ratio_cols:
                ra, rb = s.get(a, {}).get("rps"), s.get(b, {}).get("rps")
                row.append(f"{ra / rb:.2f}" if ra and rb else "-")
            for a, b in ratio_cols:
                ca = s.get(a, {}).get("server_us_per_req")
                cb = s.get(b, {}).get("server_us_per_req")
                row.append(f"{cb / ca:.2f}" if ca and cb else "-")
            rows.append(row)
        lines += markdown_table(head, rows)
        lines.append("")
        head = [
            "case",
            "target",
            "req/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "server CPU %",
            "server µs/req",
            "loadgen CPU %",
            "errors",
            "note",
        ]
        rows = []
        for c in load_cases:
            for t in targets:
                st = summary[c.name].get(t)
                if not st:
                    continue
                ok = st.get("result_ok_fraction")
                note = notes.get(c.name, {}).get(t, "")
                if ok is not None and ok < 0.999:
                    note = (note + "; " if note else "") + f"result code 0 for {ok:.0%}"
                rows.append(
                    [
                        c.name,
                        t,
                        fmt_num(st["rps"]),
                        fmt_num(st["p50_us"], 1),
                        fmt_num(st["p99_us"], 1),
                        fmt_num(st["p999_us"], 1),
                        fmt_num(st["server_cpu_pct"]),
                        fmt_num(st["server_us_per_req"], 2),
                        fmt_num(st["loadgen_cpu_pct"]),
                        fmt_num(st["errors"]),
                        note,
                    ]
                )
        lines += markdown_table(head, rows)
        lines.append("")
    idle_cases = [c for c in cases if c.kind == "idle" and c.name in summary]
    if idle_cases:
        head = [
            "case",
            "target",
            "connections",
            "connect s",
            "answered",
            "RSS before MiB",
            "RSS after MiB",
            "KiB/conn (after ping)",
            "KiB/conn (idle)",
            "ping p50 µs",
            "errors",
            "note",
        ]
        rows = []
        for c in idle_cases:
            for t in targets:
                st = summary[c.name].get(t)
                if not st:
                    continue
                rows.append(
                    [
                        c.name,
                        t,
                        fmt_num(st["connections"]),
                        fmt_num(st.get("connect_s"), 1),
                        fmt_num(st["answered"]),
                        fmt_num(st["rss_before_mib"], 1),
                        fmt_num(st["rss_after_mib"], 1),
                        fmt_num(st["rss_per_conn_kib"], 2),
                        fmt_num(st["rss_idle_per_conn_kib"], 2),
                        fmt_num(st["ping_p50_us"]),
                        fmt_num(st["errors"]),
                        notes.get(c.name, {}).get(t, ""),
                    ]
                )
        lines += markdown_table(head, rows)
        lines.append("")
    for c in cases:
        for t, note in notes.get(c.name, {}).items():
            if c.name not in summary or t not in summary[c.name]:
                lines.append(f"- {c.name} / {t}: {note}")
    return lines


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return (
            "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)) + " |"
        )

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return [line(head), sep, *[line(r) for r in rows]]


# ---------------------------------------------------------------------------
# Main.


def select_cases(patterns: Sequence[str] | None) -> list[Case]:
    if not patterns:
        return [c for c in CASES if c.kind in RUNNERS]
    chosen = [c for c in CASES if any(fnmatch.fnmatch(c.name, p) for p in patterns)]
    unknown = [p for p in patterns if not any(fnmatch.fnmatch(c.name, p) for c in CASES)]
    if unknown:
        sys.exit(f"unknown case(s): {', '.join(unknown)} (see --list)")
    return chosen


@contextlib.contextmanager
def servers_cleanup() -> Iterator[list[Server]]:
    started: list[Server] = []
    try:
        yield started
    finally:
        for s in started:
            stop(s.proc)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="1 run of 3 s per case (1 s warm-up)")
    ap.add_argument("--cases", nargs="+", metavar="CASE", help="case names or globs")
    ap.add_argument(
        "--targets",
        nargs="+",
        metavar="TARGET",
        choices=list(TARGETS),
        default=list(TARGETS),
        help=f"default: {' '.join(TARGETS)}",
    )
    ap.add_argument("--runs", type=int, help="runs per case (default 3, quick 1)")
    ap.add_argument("--duration", type=float, help="measured seconds (default 10, quick 3)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds (default 2, quick 1)")
    ap.add_argument("--idle-hold", type=float, help="idle seconds (default 5, quick 2)")
    ap.add_argument("--no-build", action="store_true", help="use the loadgen already built")
    ap.add_argument("--out", type=Path, help="result file (default results/<timestamp>.json)")
    ap.add_argument("--list", action="store_true", help="list cases and targets and exit")
    ap.add_argument(
        "--report",
        type=Path,
        metavar="JSON",
        help="print the tables of an earlier results file and exit",
    )
    args = ap.parse_args(argv)

    if args.report:
        doc = json.loads(args.report.read_text())
        m = doc["machine"]
        print(
            f"{doc['started']}: {m['cpu_model']}, {m['cores']} cores, kernel {m['kernel']}, "
            f"python {m['python']}; settings {doc['settings']}"
        )
        summary = summarise_runs(doc["runs"])  # recomputed, so new columns apply to old files
        shown = [c for c in CASES if c.name in summary]
        print("\n".join(print_tables(summary, shown, list(doc["targets"]), doc["notes"])))
        return 0

    if args.list:
        for c in CASES:
            state = "" if c.kind in RUNNERS else "  [no runner yet]"
            print(f"{c.name:22} {c.kind:8} {c.help}{state}")
        for t in TARGETS.values():
            print(f"target {t.name:14} {t.description}")
        return 0

    quick = args.quick
    cfg = Settings(
        runs=args.runs or (1 if quick else 3),
        duration=args.duration or (3.0 if quick else 10.0),
        warmup=args.warmup if args.warmup is not None else (1.0 if quick else 2.0),
        idle_hold=args.idle_hold or (2.0 if quick else 5.0),
        connect_timeout=15.0,
    )
    cases = select_cases(args.cases)
    nofile = raise_nofile()
    if not args.no_build:
        build_loadgen()
    if not shutil.which("taskset"):
        print("warning: taskset not found: server and load are not pinned", file=sys.stderr)

    targets: list[str] = []
    notes: dict[str, dict[str, str]] = {}
    skipped: dict[str, str] = {}
    for name in args.targets:
        why = probe(TARGETS[name])
        if why:
            skipped[name] = why
            print(f"skipping {name}: not runnable yet: {why}", file=sys.stderr)
        else:
            targets.append(name)
    if not targets:
        print("no target can run", file=sys.stderr)
        return 1

    started_at = time.strftime("%Y%m%d-%H%M%S")
    info = machine_info(nofile)
    print(
        f"machine: {info['cpu_model']}, {info['cores']} cores, kernel {info['kernel']}, "
        f"python {info['python']}, load average {loadavg()}"
    )
    print(
        f"{cfg.runs} run(s) x {cfg.duration:g} s after {cfg.warmup:g} s warm-up; "
        f"servers on CPU {SERVER_CPU}, loadgen on CPU {LOAD_CPU}; targets: {' '.join(targets)}"
    )

    records: list[dict[str, Any]] = []
    per: dict[str, dict[str, list[dict[str, Any]]]] = {}
    runnable = [c for c in cases if c.kind in RUNNERS]
    for c in cases:
        if c.kind not in RUNNERS:
            print(f"{c.name}: no runner for kind {c.kind!r} yet, skipped", file=sys.stderr)
    total = len(runnable) * cfg.runs * len(targets)
    step = 0
    # Server logs stay on disk (their path is printed) so a failure can be looked into.
    logdir = Path(tempfile.mkdtemp(prefix="trioserver-bench-logs-"))
    for case in runnable:
        runner = RUNNERS[case.kind]
        with servers_cleanup() as started:
            live: dict[str, Server] = {}
            failed: set[str] = set()
            for rep in range(1, cfg.runs + 1):
                for name in targets:
                    step += 1
                    label = f"[{step}/{total}] {case.name:16} {name:11} run {rep}"
                    if name in failed:
                        continue
                    if name in live and case.fresh_server_per_run:
                        stop(live.pop(name).proc)
                    if name not in live:
                        try:
                            server = start_server(TARGETS[name], case, logdir, cfg.connect_timeout)
                        except (RuntimeError, OSError) as exc:
                            failed.add(name)  # it will not start: skip the rest of this case
                            add_note(notes, case.name, name, str(exc).strip().splitlines()[0])
                            print(f"{label}: FAILED to start: {exc}", file=sys.stderr)
                            continue
                        started.append(server)
                        live[name] = server
                        if "login" in case.tags:
                            try:
                                note = setup_accounts(server, cfg)
                            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                                note = f"account setup failed: {str(exc).splitlines()[0]}"
                            if note:
                                add_note(notes, case.name, name, note)
                    server = live[name]
                    try:
                        rec = runner(case, server, cfg, rep)
                    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
                        msg = str(exc).strip()
                        dead = not server_alive(server)
                        add_note(
                            notes,
                            case.name,
                            name,
                            ("server died; " if dead else "") + msg.splitlines()[0],
                        )
                        print(f"{label}: FAILED: {msg}\n{server.log_tail()}", file=sys.stderr)
                        stop(live.pop(name).proc)  # the next run gets a fresh server
                        continue
                    if not server_alive(server):
                        rec["server_died"] = True
                        rec["server_log_tail"] = server.log_tail(20)
                        add_note(
                            notes, case.name, name, "server (or its worker) exited during a run"
                        )
                        print(f"{label}: server died; log:\n{server.log_tail()}", file=sys.stderr)
                        stop(live.pop(name).proc)
                    elif rec.get("errors"):
                        rec["server_log_tail"] = server.log_tail(20)
                    rec.update(case=case.name, target=name, run=rep, loadavg=loadavg())
                    records.append(rec)
                    per.setdefault(case.name, {}).setdefault(name, []).append(rec)
                    print(f"{label}: {progress(case, rec)}", flush=True)

    summary = summarise_runs(records)
    lines = print_tables(summary, runnable, targets, notes)
    for name, why in skipped.items():
        lines.append(f"- {name} skipped: {why}")
    print()
    print("\n".join(lines))

    out = args.out or RESULTS / f"{started_at}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "started": started_at,
        "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
        "machine": info,
        "loadavg_end": loadavg(),
        "settings": cfg.__dict__,
        "targets": {
            t: {"command": list(TARGETS[t].command), "description": TARGETS[t].description}
            for t in targets
        },
        "skipped": skipped,
        "cases": {
            c.name: {
                "kind": c.kind,
                "help": c.help,
                "mix": c.mix,
                "conns": c.conns,
                "depth": c.depth,
            }
            for c in runnable
        },
        "summary": summary,
        "notes": notes,
        "table": lines,
        "runs": records,
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"server logs: {logdir}")
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


def progress(case: Case, rec: dict[str, Any]) -> str:
    if case.kind == "idle":
        return (
            f"{rec['answered']:,}/{rec['connections']:,} answered, server RSS "
            f"{rec['rss_before_mib']:.1f} -> {rec['rss_after_mib']:.1f} MiB, "
            f"{fmt_num(rec['rss_per_conn_kib'], 2)} KiB/conn, errors {rec['errors']}"
        )
    extra = ""
    if "result_ok_fraction" in rec:
        extra = f", result 0 for {rec['result_ok_fraction']:.0%}"
    return (
        f"{rec['rps']:>10,.0f} req/s  p50 {rec['p50_us']:8.1f} µs  p99 {rec['p99_us']:8.1f} µs"
        f"  server {rec['server_cpu_pct']:5.1f}% CPU ({fmt_num(rec['server_us_per_req'], 2)}"
        f" µs/req)  loadgen {rec['loadgen_cpu_pct']:5.1f}%  errors {rec['errors']}{extra}"
    )


if __name__ == "__main__":
    sys.exit(main())
