"""Run the benchmark suite: servers side by side, medians and ratios.

    python benchmarks/run.py                     # every case, 3 runs of 10 s after 2 s warm-up
    python benchmarks/run.py --quick             # 1 run of 3 s per case
    python benchmarks/run.py --cases ping-100x16 idle-10k --targets bare-trio uvloop
    python benchmarks/run.py --cases 'http-*' ping-100x16-2workers
    python benchmarks/run.py --list
    python benchmarks/run.py --report results/FILE.json --charts   # its tables and charts

Binary protocol, idle connections, trioserver with 2 workers against 1, and HTTP
static files (wrk against nginx, trioserver and a bare trio+httptools loop). Each
server runs pinned to CPU 0 (``taskset -c 0``), the C load generator
(``benchmarks/loadgen.c``, built here with the system compiler) or wrk pinned to
CPU 1; the 2-workers case pins nothing (see benchmarks/README.md).
Runs are interleaved (case by case, run by run, target by target) so that noise
from a shared machine falls on every target alike; what to trust is the ratios.
Everything talks to 127.0.0.1 only, every run is bounded in time, and every
process started here is stopped by its own PID.

Results: a progress line per run, a table of medians and ratios at the end,
``benchmarks/results/<timestamp>.json`` with every run and the machine, and beside it a
PNG chart of each table's per-CPU-second ratios (``charts.py``; needs matplotlib, the
``bench`` extra).

Adding a target: one entry in ``TARGETS``. Adding a case: one entry in ``CASES`` (its
targets, ratios and CPUs); a case of a new kind also needs a runner in ``RUNNERS``.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import http.client
import json
import os
import platform
import re
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
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LOADGEN_SRC = BENCH / "loadgen.c"
LOADGEN = BENCH / "build" / "loadgen"
WEBLOAD_SRC = BENCH / "webload.c"
WEBLOAD = BENCH / "build" / "webload"
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
HTTP_CONNS = 100  # wrk -t1 -c100, as in the goals (benchmarks/README.md)
HTTP_FILES = {"index.html": 1024, "1m.bin": 1 << 20}

# ---------------------------------------------------------------------------
# Targets: the servers under test. Strings in commands are formatted with
# {python}, {port}, {host}, {conns}, {workdir} (this run's scratch and log directory),
# {docroot} (the HTTP files: index.html of 1 KiB, 1m.bin of 1 MiB) and {nginx}.


@dataclass(frozen=True)
class Target:
    name: str
    command: tuple[str, ...]
    # Extra arguments for cases carrying a tag ("accounts", "idle"), same formatting.
    tag_args: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # A command that must exit 0 (within 20 s) for the target to be runnable at all.
    probe: tuple[str, ...] | None = None
    # Programs that must be on PATH (or in /usr/sbin) for the target to run.
    needs: tuple[str, ...] = ()
    # Check that account setup really created accounts (result code 0); baselines
    # answer any register/login with a fixed reply, so for them there is nothing to check.
    checks_accounts: bool = False
    # The command starts a master that forks workers: measure the workers, not it.
    forks_workers: bool = False
    workers: int = 1  # how many workers to wait for (forks_workers)
    # Called with the format values before the command starts (e.g. writes a config file).
    prepare: Callable[[dict[str, Any]], None] | None = None
    description: str = ""
    # The directory it runs in (`python -m trioserver` imports the trioserver/ there);
    # None: the repository root. `--before DIR` sets it for the "-before" target.
    cwd: Path | None = None


def trioserver_command(workers: int, *extra: str) -> tuple[str, ...]:
    """``python -m trioserver serve`` with N workers, its account store in memory
    (never the repository's data/ directory), no pidfile (none in the repository, and
    no clash with a server started there) and the given extra arguments."""
    return (
        "{python}",
        "-m",
        "trioserver",
        "serve",
        "--set",
        f"master.workers={workers}",
        "--set",
        "accounts.url=memory:",
        "--set",
        'master.pidfile=""',
        *extra,
    )


# The binary-protocol trioserver: HTTP off (its default listener, 127.0.0.1:8080, would
# be shared by every server this suite starts and by anything else on the machine).
TRIOSERVER_BINARY = (
    "--set",
    'server.listen=["{host}:{port}"]',
    "--set",
    "http.listen=[]",
    "--set",
    "connection.flood_check=false",
    "--set",
    "connection.heartbeat=false",
)
TRIOSERVER_TAGS: Mapping[str, tuple[str, ...]] = {
    # Benchmark-only settings, said so: the cheap hash (one salted SHA-256, not scrypt)
    # and every registration and login limit off (every benchmark client shares
    # 127.0.0.1; with them all off no limit is shared through the store either). The
    # store is in memory for the trioserver target, SQLite for trioserver-sqlite.
    "accounts": (
        "--set",
        "accounts.hash=insecure-fast",
        "--set",
        "accounts.max_registrations_per_address=0",
        "--set",
        "accounts.max_failures_per_address=0",
        "--set",
        "accounts.max_failures_per_name=0",
        "--set",
        "accounts.max_failures_per_name_untrusted=0",
    ),
    "idle": ("--set", "server.max_connections={conns}"),
}
TRIOSERVER_PROBE = ("{python}", "-m", "trioserver", "serve", "--help")


def write_nginx_conf(values: dict[str, Any], *, file_cache: bool = False) -> None:
    """nginx.conf for one nginx on {port}: http_bench.py's (1 worker, sendfile, tcp_nopush,
    access_log off), with its pid file and temp paths in a directory of its own.
    ``file_cache``: with ``open_file_cache`` on (descriptors and stat results kept, so a
    request opens no file: what trioserver's cache does for small files)."""
    sys.path.insert(0, str(BENCH))
    try:
        from http_bench import NGINX_CONF, NGINX_OPEN_FILE_CACHE
    finally:
        sys.path.remove(str(BENCH))
    prefix = Path(values["workdir"]) / f"nginx-{values['port']}"
    prefix.mkdir(mode=0o755, exist_ok=True)
    conf = NGINX_CONF.format(tmp=prefix, port=values["port"], root=values["docroot"])
    if file_cache:
        conf = conf.replace(
            "    access_log off;\n", "    access_log off;\n" + NGINX_OPEN_FILE_CACHE
        )
    (prefix / "nginx.conf").write_text(conf)


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
            trioserver_command(1, *TRIOSERVER_BINARY),
            tag_args=TRIOSERVER_TAGS,
            probe=TRIOSERVER_PROBE,
            checks_accounts=True,
            forks_workers=True,
            description="python -m trioserver serve, master + 1 worker (the worker is measured), "
            "flood rule and heartbeat off, HTTP off",
        ),
        Target(
            "trioserver-sqlite",
            trioserver_command(
                1,
                *TRIOSERVER_BINARY,
                "--set",
                'accounts.url="sqlite:///{workdir}/accounts-{port}.sqlite3"',
                "--set",
                'accounts.session_secret="{workdir}/session-secret-{port}"',
            ),
            tag_args=TRIOSERVER_TAGS,
            probe=TRIOSERVER_PROBE,
            checks_accounts=True,
            forks_workers=True,
            description="trioserver as above with the default store, SQLite (a file in this "
            "run's scratch directory; WAL, synchronous=FULL: a reply only after its commit's "
            "fsync), for the account cases",
        ),
        Target(
            "trioserver-1w",
            trioserver_command(1, *TRIOSERVER_BINARY),
            probe=TRIOSERVER_PROBE,
            forks_workers=True,
            description="trioserver as above, master.workers=1 (for the workers case)",
        ),
        Target(
            "trioserver-2w",
            trioserver_command(2, *TRIOSERVER_BINARY),
            probe=TRIOSERVER_PROBE,
            forks_workers=True,
            workers=2,
            description="trioserver as above, master.workers=2 (both workers measured)",
        ),
        Target(
            "nginx",
            ("{nginx}", "-c", "{workdir}/nginx-{port}/nginx.conf", "-p", "{workdir}/nginx-{port}"),
            needs=("nginx", "wrk"),
            forks_workers=True,
            prepare=write_nginx_conf,
            description="nginx, 1 worker (measured), sendfile + tcp_nopush, access_log off "
            "(http_bench.NGINX_CONF)",
        ),
        Target(
            "nginx-cache",
            ("{nginx}", "-c", "{workdir}/nginx-{port}/nginx.conf", "-p", "{workdir}/nginx-{port}"),
            needs=("nginx", "wrk"),
            forks_workers=True,
            prepare=partial(write_nginx_conf, file_cache=True),
            description="nginx as above with open_file_cache on (http_bench.NGINX_OPEN_FILE_CACHE)",
        ),
        Target(
            "trioserver-http",
            trioserver_command(
                1,
                "--set",
                "server.listen=[]",
                "--set",
                'http.listen=["{host}:{port}"]',
                "--set",
                "http.document_root={docroot}",
            ),
            # Many clients at once: room for every one of them, and the listen backlog
            # nginx and the bare baseline get (4096).
            tag_args={
                "churn": (
                    "--set",
                    "server.max_connections={conns}",
                    "--set",
                    "server.backlog=4096",
                )
            },
            probe=TRIOSERVER_PROBE,
            needs=("wrk",),
            forks_workers=True,
            description="python -m trioserver serve, HTTP only, master + 1 worker (measured), "
            "every HTTP feature at its default (cache with stat checks, conditional and "
            "range requests, timeouts), access log off (its default)",
        ),
        Target(
            "bare-httptools",
            ("{python}", str(BENCH / "http_bench.py"), "--serve-bare", "{port}", "{docroot}"),
            needs=("wrk",),
            description="http_bench.py --serve-bare: trio + httptools, cached bytes, no "
            "features: the ceiling for HTTP on trio",
        ),
    )
}

BINARY_TARGETS = ("bare-trio", "uvloop", "trioserver")
ACCOUNT_TARGETS = (*BINARY_TARGETS, "trioserver-sqlite")
HTTP_TARGETS = ("nginx", "nginx-cache", "trioserver-http", "bare-httptools")
# Ratios printed for a case (numerator, denominator), when both ran.
RATIOS: tuple[tuple[str, str], ...] = (
    ("trioserver", "bare-trio"),
    ("trioserver", "uvloop"),
    ("bare-trio", "uvloop"),
)
HTTP_RATIOS: tuple[tuple[str, str], ...] = (
    ("trioserver-http", "nginx"),
    ("trioserver-http", "nginx-cache"),
    ("trioserver-http", "bare-httptools"),
    ("bare-httptools", "nginx"),
)
WORKERS_RATIOS: tuple[tuple[str, str], ...] = (("trioserver-2w", "trioserver-1w"),)
ACCOUNT_RATIOS: tuple[tuple[str, str], ...] = (
    ("trioserver", "bare-trio"),
    ("trioserver-sqlite", "bare-trio"),
    ("trioserver-sqlite", "trioserver"),
    ("trioserver", "uvloop"),
)
# Ratios across cases of one run: (case, its target, against case, its target).
CASE_RATIOS: tuple[tuple[str, str, str, str], ...] = (
    ("resume-100x1", "trioserver", "ping-100x1", "trioserver"),
    ("resume-100x1", "trioserver-sqlite", "ping-100x1", "trioserver"),
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
    targets: tuple[str, ...] = BINARY_TARGETS
    ratios: tuple[tuple[str, str], ...] = RATIOS
    # CPUs the server and the load run on (taskset -c); None: not pinned.
    server_cpus: str | None = SERVER_CPU
    load_cpus: str | None = LOAD_CPU
    path: str = ""  # http: the URL path
    close: bool = False  # http: every request says "Connection: close"
    # http: webload instead of wrk: `conns` clients, each one HTTP/1.0 request per connection
    http10: bool = False


CASES: tuple[Case, ...] = (
    Case("ping-1x1", "load", "1 connection, 1 ping outstanding: latency", conns=1, depth=1),
    Case("ping-100x1", "load", "100 connections, 1 ping outstanding each", conns=100, depth=1),
    Case("ping-100x16", "load", "100 connections, 16 pings pipelined each", conns=100, depth=16),
    Case("ping-1000x1", "load", "1000 connections, 1 outstanding each", conns=1000),
    Case(
        "register-100x16",
        "load",
        "register (code 5), unique names, 100x16",
        mix="register",
        conns=100,
        depth=16,
        tags=frozenset({"accounts"}),
        targets=ACCOUNT_TARGETS,
        ratios=ACCOUNT_RATIOS,
    ),
    Case(
        "login-100x16",
        "load",
        f"login (code 6) over {LOGIN_USERS} registered accounts, 100x16",
        mix="login",
        conns=100,
        depth=16,
        tags=frozenset({"accounts", "login"}),
        targets=ACCOUNT_TARGETS,
        ratios=ACCOUNT_RATIOS,
    ),
    Case(
        "resume-100x1",
        "load",
        f"resume (code 1) with the session tokens of {LOGIN_USERS} logins, 100x1 "
        "(compare with ping-100x1 in the same run; memory store and SQLite)",
        mix="resume",
        conns=100,
        depth=1,
        tags=frozenset({"accounts", "login", "resume"}),
        targets=("trioserver", "trioserver-sqlite"),
        ratios=(("trioserver-sqlite", "trioserver"),),
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
    Case(
        "ping-100x16-2workers",
        "workers",
        "trioserver master.workers=2 against =1, ping 100x16; server and load generator "
        "NOT pinned (both cores shared by all of them); ratios of req/s and per CPU-s",
        conns=100,
        depth=16,
        targets=("trioserver-1w", "trioserver-2w"),
        ratios=WORKERS_RATIOS,
        server_cpus=None,
        load_cpus=None,
    ),
    Case(
        "http-keepalive",
        "http",
        f"wrk -t1 -c{HTTP_CONNS}: 1 KiB index.html, keep-alive",
        conns=HTTP_CONNS,
        targets=HTTP_TARGETS,
        ratios=HTTP_RATIOS,
        path="/index.html",
    ),
    Case(
        "http-close",
        "http",
        f"wrk -t1 -c{HTTP_CONNS}: 1 KiB index.html, every request with Connection: close",
        conns=HTTP_CONNS,
        targets=HTTP_TARGETS,
        ratios=HTTP_RATIOS,
        path="/index.html",
        close=True,
    ),
    Case(
        "http-1mib",
        "http",
        f"wrk -t1 -c{HTTP_CONNS}: 1 MiB file, keep-alive",
        conns=HTTP_CONNS,
        targets=HTTP_TARGETS,
        ratios=HTTP_RATIOS,
        path="/1m.bin",
    ),
    Case(
        "http10-1k",
        "http",
        "webload -c 1000: HTTP/1.0, one request per connection (webbench's pattern), 1 KiB",
        conns=1000,
        targets=HTTP_TARGETS,
        ratios=HTTP_RATIOS,
        path="/index.html",
        http10=True,
        tags=frozenset({"churn"}),
    ),
    Case(
        "http10-8k",
        "http",
        "webload -c 8000: HTTP/1.0, one request per connection (webbench's pattern), 1 KiB",
        conns=8000,
        targets=HTTP_TARGETS,
        ratios=HTTP_RATIOS,
        path="/index.html",
        http10=True,
        tags=frozenset({"churn"}),
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


def pinned(cpu: str | None, argv: Sequence[str]) -> list[str]:
    """argv run on `cpu` (taskset -c, which execs: the PID stays the program's); None: as is."""
    return ["taskset", "-c", cpu, *argv] if cpu and shutil.which("taskset") else list(argv)


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


# Every server process this run started and has not yet stopped: main() stops whatever
# is left here on any exit (an exception, Ctrl-C, SIGTERM).
STARTED: dict[int, subprocess.Popen[bytes]] = {}


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Stop one server by its PID: SIGTERM, then SIGKILL after `timeout`; then SIGKILL, by
    PID, any of its descendants (a master's workers) noted before the signal and still there."""
    kids = descendants(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    deadline = time.monotonic() + 2.0  # a master's workers exit just after it
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for k in kids:
        if alive(k):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(k, signal.SIGKILL)
    STARTED.pop(proc.pid, None)


def stop_all() -> None:
    for proc in list(STARTED.values()):
        stop(proc)


@dataclass
class Server:
    target: Target
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    measured: tuple[int, ...] = ()  # the processes doing the work: the workers, if any
    tokens: Path | None = None  # resume records (name field + token) from setup_tokens

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


def worker_pids(pid: int, settle: float = 2.0, expect: int = 1) -> tuple[int, ...]:
    """The leaf processes under `pid` (a master's workers), or `pid` itself if it has none;
    waits up to `settle` seconds for `expect` of them.

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
        if len(leaves) >= expect or time.monotonic() >= deadline:
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


def format_values(port: int, conns: int, workdir: Path) -> dict[str, Any]:
    return {
        "python": PY,  # sys.executable: the real interpreter, never a pyenv shim
        "port": port,
        "host": HOST,
        "conns": conns,
        "workdir": workdir,
        "docroot": workdir / "www",
        "nginx": shutil.which("nginx") or "/usr/sbin/nginx",
    }


def start_server(target: Target, case: Case, logdir: Path, timeout: float) -> Server:
    port = free_port()
    values = format_values(port, case.conns + 100, logdir)
    if target.prepare:
        target.prepare(values)
    argv = fmt_args(target.command, **values)
    for tag in sorted(case.tags):
        argv += fmt_args(target.tag_args.get(tag, ()), **values)
    log = logdir / f"{target.name}-{case.name}-{port}.log"
    with log.open("wb") as out:
        # A session of its own: a Ctrl-C at the terminal reaches only this script,
        # which then stops every server itself, by PID, in order.
        proc = subprocess.Popen(
            pinned(case.server_cpus, argv),
            cwd=target.cwd or ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    STARTED[proc.pid] = proc
    server = Server(target, port, proc, log)
    if not wait_for_port(port, proc, timeout):
        stop(proc)
        raise RuntimeError(
            f"{target.name} did not accept on {HOST}:{port} within {timeout:.0f} s "
            f"(exit code {proc.returncode}); command: {' '.join(argv)}\n{server.log_tail()}"
        )
    if target.forks_workers:
        server.measured = worker_pids(proc.pid, settle=5.0, expect=target.workers)
        if len(server.measured) < target.workers:
            stop(proc)
            raise RuntimeError(
                f"{target.name}: {len(server.measured)} of {target.workers} workers started"
            )
    return server


def loadgen(args: Sequence[str], timeout: float, cpu: str | None = LOAD_CPU) -> dict[str, Any]:
    """Run the load generator on `cpu` (None: unpinned); return its JSON report."""
    argv = pinned(cpu, [str(LOADGEN), *args, "-j"])
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
    argv = [cc, "-O2", "-Wall", "-Wextra", "-o", str(WEBLOAD), str(WEBLOAD_SRC)]
    subprocess.run(argv, check=True, timeout=120)


def probe(target: Target) -> str | None:
    """None if the target can run here, else why not."""
    for tool in target.needs:
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed (apt-get install -y nginx wrk)"
    if target.probe is None:
        return None
    argv = fmt_args(target.probe, **format_values(0, 0, Path(".")))
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
    if case.mix == "resume":
        if server.tokens is None:
            raise RuntimeError("no session tokens (account setup failed)")
        args += ["-R", str(server.tokens)]
    pids = server.measured or (server.proc.pid,)
    ticks_before = [cpu_ticks(p) for p in pids]
    report = loadgen(
        args, timeout=cfg.warmup + cfg.duration + cfg.connect_timeout + 30, cpu=case.load_cpus
    )
    ticks: list[int] = [cpu_ticks(p) - b for p, b in zip(pids, ticks_before, strict=True)]
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
    all_ticks = max(1, sum(ticks))
    if len(pids) > 1:
        # How the work fell on the workers (CPU over warm-up + window, from /proc).
        shares = [t / all_ticks for t in ticks]
        record["worker_cpu_share"] = shares
        record["worker_cpu_share_min"] = min(shares)
    if case.mix in ("register", "login", "resume") and requests:
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


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def make_docroot(workdir: Path) -> Path:
    """The HTTP files every HTTP target serves: index.html (1 KiB) and 1m.bin (1 MiB)."""
    docroot = workdir / "www"
    docroot.mkdir(mode=0o755, exist_ok=True)
    page = b"<!doctype html><title>bench</title>"
    page += b"x" * (HTTP_FILES["index.html"] - len(page))
    (docroot / "index.html").write_bytes(page)
    (docroot / "1m.bin").write_bytes(os.urandom(HTTP_FILES["1m.bin"]))
    for f in docroot.iterdir():
        f.chmod(0o644)
    workdir.chmod(0o755)  # nginx's worker runs as an unprivileged user
    return docroot


CLOSE_WAIT = 2.0  # seconds the close check waits for the server to close


def check_http(server: Server, path: str) -> float | None:
    """The server must really serve the file (a benchmark of 404s proves nothing); and
    whether a response the client asked to be last closes at once: returns the slowest
    time in ms from sending such a request (HTTP/1.0; HTTP/1.1 with Connection: close) to
    EOF, or None if one was not closed within CLOSE_WAIT (the bare baseline leaves that
    to the client; wrk closes such connections itself)."""
    docroot = Path(format_values(0, 0, server.log.parent)["docroot"])
    want = (docroot / path.lstrip("/")).read_bytes()
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200 or body != want:
        raise RuntimeError(f"GET {path} answered {response.status} with {len(body)} bytes")
    slowest = 0.0
    for request in (
        f"GET {path} HTTP/1.0\r\nHost: {HOST}\r\n\r\n",
        f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n",
    ):
        with socket.create_connection((HOST, server.port), timeout=CLOSE_WAIT) as s:
            started = time.monotonic()
            s.sendall(request.encode())
            got = 0
            try:
                while chunk := s.recv(1 << 20):
                    got += len(chunk)
            except TimeoutError:
                return None
            slowest = max(slowest, (time.monotonic() - started) * 1000)
        if got < len(want):
            raise RuntimeError(f"{request.split(chr(13))[0]!r}: only {got} bytes before EOF")
    return slowest


WRK_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def wrk(server: Server, case: Case, seconds: float) -> tuple[str, float]:
    """Run wrk -t1 -c<conns> for `seconds` (whole seconds, at least 1) on the load CPU;
    returns its output and its CPU seconds."""
    argv = ["wrk", "-t1", f"-c{case.conns}", f"-d{max(1, round(seconds))}s", "--latency"]
    if case.close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{HOST}:{server.port}{case.path}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        pinned(case.load_cpus, argv),
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0 or "Requests/sec" not in done.stdout:
        raise RuntimeError(f"wrk exited {done.returncode}: {' '.join(argv)}\n{done.stderr}")
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done.stdout, used


def run_webload(
    case: Case, server: Server, cfg: Settings, close_ms: float | None
) -> dict[str, Any]:
    """One webload run: `conns` clients, each looping connect, one HTTP/1.0 request, read
    to EOF, close; warm-up and measured window in the same run (connections in flight at
    the window's start are counted in the window they finish in)."""
    pids = server.measured or (server.proc.pid,)
    argv = pinned(
        case.load_cpus,
        [
            str(WEBLOAD),
            "-p",
            str(server.port),
            "-c",
            str(case.conns),
            "-t",
            str(cfg.duration),
            "-w",
            str(cfg.warmup),
            "-r",
            case.path,
            "-S",
            server.pids_arg,
            "-j",
        ],
    )
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=cfg.warmup + cfg.duration + 30, check=False
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"webload exited {done.returncode}: {' '.join(argv)}\n{done.stderr}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    rss = [rss_kib(p) for p in pids]
    requests = report["requests"]
    return {
        "rps": report["rps"],
        "p50_us": report["latency_us"]["p50"],
        "p99_us": report["latency_us"]["p99"],
        "server_cpu_pct": report["server_cpu_pct"],
        "server_us_per_req": report["server_cpu_s"] / requests * 1e6 if requests else None,
        "loadgen_cpu_pct": report["loadgen_cpu_pct"],
        "errors": report["failed"],
        "rss_mib_per_worker": max(rss) / 1024 if rss else None,
        "last_response_close_ms": close_ms,
        "webload": report,
    }


def run_http(case: Case, server: Server, cfg: Settings, rep: int) -> dict[str, Any]:
    """One wrk run (after a warm-up run) against an HTTP server; the server's CPU (its
    workers') is read from /proc around the measured run. HTTP/1.0 cases run webload."""
    close_ms = check_http(server, case.path)
    if case.http10:
        return run_webload(case, server, cfg, close_ms)
    if cfg.warmup > 0:
        wrk(server, case, cfg.warmup)
    pids = server.measured or (server.proc.pid,)
    ticks_before = sum(cpu_ticks(p) for p in pids)
    started = time.monotonic()
    out, wrk_cpu = wrk(server, case, cfg.duration)
    wall = time.monotonic() - started
    server_cpu = (sum(cpu_ticks(p) for p in pids) - ticks_before) / os.sysconf("SC_CLK_TCK")

    def grab(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, out, re.MULTILINE)

    requests = int(grab(r"(\d+) requests in")[1])  # type: ignore[index]
    window = float(grab(r"requests in ([\d.]+)s")[1])  # type: ignore[index]
    latency: dict[str, float | None] = {}
    for pct in ("50", "99"):
        m = grab(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$")
        latency[pct] = float(m[1]) * WRK_UNITS[m[2]] if m else None
    socket_errors = grab(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    non2xx = grab(r"Non-2xx or 3xx responses: (\d+)")
    errors = {
        "connect": int(socket_errors[1]) if socket_errors else 0,
        "read": int(socket_errors[2]) if socket_errors else 0,
        "write": int(socket_errors[3]) if socket_errors else 0,
        "timeout": int(socket_errors[4]) if socket_errors else 0,
        "non_2xx_3xx": int(non2xx[1]) if non2xx else 0,
    }
    rss = [rss_kib(p) for p in pids]
    return {
        "rps": requests / window,
        "p50_us": latency["50"],
        "p99_us": latency["99"],
        "server_cpu_pct": server_cpu / window * 100,
        "server_us_per_req": server_cpu / requests * 1e6 if requests else None,
        "loadgen_cpu_pct": wrk_cpu / wall * 100,
        "errors": sum(int(v) for v in errors.values()),
        "wrk_errors": errors,
        "rss_mib_per_worker": max(rss) / 1024 if rss else None,
        "last_response_close_ms": close_ms,
        "wrk_output": out,
    }


RUNNERS: dict[Kind, Runner] = {
    "load": run_load,
    "idle": run_idle,
    # 2 workers against 1 is the load runner on a case that pins nothing (see the README).
    "workers": run_load,
    "http": run_http,
}


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


def setup_tokens(server: Server, path: Path) -> str | None:
    """Log every setup account in once and keep its session token (for a resume case)."""
    from trioserver.client import BlockingClient
    from trioserver.messages import USERNAME_FIELD

    records = []
    with BlockingClient.connect(HOST, server.port, timeout=10) as client:
        for u in range(LOGIN_USERS):
            name = f"{ACCOUNT_PREFIX}u{u}"
            reply = client.login(name, "benchpass")
            if reply.result != 0 or not any(reply.token):
                return f"needs tokens: login {name} answered {reply.result} without a token"
            records.append(name.encode().ljust(USERNAME_FIELD, b"\0") + reply.token)
    path.write_bytes(b"".join(records))
    server.tokens = path
    return None


def case_ratio_lines(summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """One line per CASE_RATIOS entry whose two cases ran for its target."""
    lines = []
    for case, target, other, other_target in CASE_RATIOS:
        a = summary.get(case, {}).get(target, {})
        b = summary.get(other, {}).get(other_target, {})
        ra, rb = a.get("rps"), b.get("rps")
        ca, cb = a.get("server_us_per_req"), b.get("server_us_per_req")
        if ra and rb and ca and cb:
            lines.append(
                f"{case} ({target}) / {other} ({other_target}): {ra / rb:.2f} of the req/s, "
                f"{cb / ca:.2f} per "
                f"server CPU-second ({ca:.1f} against {cb:.1f} µs of server CPU per request)"
            )
    return [*lines, ""] if lines else []


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
        "git": git_state(),
    }


def git_state() -> str:
    """The commit the servers ran from, and whether the working tree had changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "trioserver"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return head[:100] + (" (trioserver/ has uncommitted changes)" if dirty else "")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


#: What a load run reports, whatever the case; a case kind adds its own figure last.
_LOAD_KEYS = (
    "rps",
    "p50_us",
    "p99_us",
    "p999_us",
    "server_cpu_pct",
    "server_us_per_req",
    "loadgen_cpu_pct",
    "errors",
)

SUMMARY_KEYS = {
    "load": (*_LOAD_KEYS, "result_ok_fraction"),
    "workers": (*_LOAD_KEYS, "worker_cpu_share_min"),
    "http": (
        "rps",
        "p50_us",
        "p99_us",
        "server_cpu_pct",
        "server_us_per_req",
        "loadgen_cpu_pct",
        "rss_mib_per_worker",
        "last_response_close_ms",
        "errors",
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
    for kind in ("load", "workers", "http"):
        group = [c for c in cases if c.kind == kind and c.name in summary]
        if not group:
            continue
        shown = [t for t in dict.fromkeys(t for c in group for t in c.targets) if t in targets]
        ratios = dict.fromkeys(r for c in group for r in c.ratios)  # every case's, in order
        ratio_cols = [(a, b) for a, b in ratios if a in shown and b in shown]
        lines += ratio_table(summary, group, shown, ratio_cols)
        lines.append("")
        if kind == "workers":
            lines += workers_projection(summary, group)
        lines += detail_table(summary, group, shown, notes)
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
    lines += case_ratio_lines(summary)
    for c in cases:
        for t, note in notes.get(c.name, {}).items():
            if c.name not in summary or t not in summary[c.name]:
                lines.append(f"- {c.name} / {t}: {note}")
    return lines


def workers_projection(
    summary: dict[str, dict[str, dict[str, Any]]], cases: Sequence[Case]
) -> list[str]:
    """What 2 workers would do with a core each and the load elsewhere, from what they did:
    2 x (requests per worker CPU-second, 2 workers / 1 worker). Derived, not measured."""
    lines = []
    for c in cases:
        one = summary[c.name].get("trioserver-1w", {})
        two = summary[c.name].get("trioserver-2w", {})
        c1, c2 = one.get("server_us_per_req"), two.get("server_us_per_req")
        if not (c1 and c2):
            continue
        lines.append(
            f"{c.name}: the workers used {fmt_num(one.get('server_cpu_pct'))} % (1 worker) and "
            f"{fmt_num(two.get('server_cpu_pct'))} % (2 workers) of one core, the load "
            f"generator {fmt_num(one.get('loadgen_cpu_pct'))} % / "
            f"{fmt_num(two.get('loadgen_cpu_pct'))} %; per worker CPU-second 2 workers did "
            f"{c1 / c2:.2f}x what 1 did, so with a whole core each (load generator elsewhere) "
            f"2 workers would do {2 * c1 / c2:.2f}x one (projected, not measured)."
        )
    return [*lines, ""] if lines else []


def ratio_table(
    summary: dict[str, dict[str, dict[str, Any]]],
    cases: Sequence[Case],
    targets: Sequence[str],
    ratio_cols: Sequence[tuple[str, str]],
) -> list[str]:
    """req/s per target, then two ratios per pair: of req/s, and of requests per server
    CPU-second (the inverse ratio of server µs/req), which holds up better when the
    server's core is shared with other work and gets only part of it."""
    head = (
        ["case"]
        + [f"{t} req/s" for t in targets]
        + [f"{a}/{b}" for a, b in ratio_cols]
        + [f"{a}/{b} per CPU-s" for a, b in ratio_cols]
    )
    rows = []
    for c in cases:
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
    return markdown_table(head, rows)


def detail_table(
    summary: dict[str, dict[str, dict[str, Any]]],
    cases: Sequence[Case],
    targets: Sequence[str],
    notes: dict[str, dict[str, str]],
) -> list[str]:
    http = cases[0].kind == "http"
    workers = cases[0].kind == "workers"
    head = ["case", "target", "req/s", "p50 µs", "p99 µs"]
    head += [] if http else ["p99.9 µs"]
    head += ["server CPU %", "server µs/req", "loadgen CPU %" if not http else "wrk CPU %"]
    head += ["least-busy worker's CPU share"] if workers else []
    head += ["RSS MiB/worker", "last response closes, ms"] if http else []
    head += ["errors", "note"]
    rows = []
    for c in cases:
        for t in targets:
            st = summary[c.name].get(t)
            if not st:
                continue
            ok = st.get("result_ok_fraction")
            note = notes.get(c.name, {}).get(t, "")
            if ok is not None and ok < 0.999:
                note = (note + "; " if note else "") + f"result code 0 for {ok:.0%}"
            row = [c.name, t, fmt_num(st["rps"]), fmt_num(st["p50_us"], 1)]
            row += [fmt_num(st["p99_us"], 1)]
            row += [] if http else [fmt_num(st["p999_us"], 1)]
            row += [
                fmt_num(st["server_cpu_pct"]),
                fmt_num(st["server_us_per_req"], 2),
                fmt_num(st["loadgen_cpu_pct"]),
            ]
            if workers:
                share = st.get("worker_cpu_share_min")
                row.append(f"{share:.0%}" if share is not None else "-")
            if http:
                row += [fmt_num(st["rss_mib_per_worker"], 1)]
                close = st["last_response_close_ms"]
                row += [fmt_num(close, 1) if close is not None else f"> {CLOSE_WAIT:g} s"]
            row += [fmt_num(st["errors"]), note]
            rows.append(row)
    return markdown_table(head, rows)


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


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_cases(
    runnable: Sequence[Case],
    case_targets: Callable[[Case], list[str]],
    cfg: Settings,
    logdir: Path,
    notes: dict[str, dict[str, str]],
    records: list[dict[str, Any]],
    per: dict[str, dict[str, list[dict[str, Any]]]],
    step: int,
    total: int,
) -> None:
    """Every case, run by run, target by target (interleaved, so that noise from a shared
    machine falls on every target alike); each case's servers are stopped at its end."""
    for case in runnable:
        runner = RUNNERS[case.kind]
        with servers_cleanup() as started:
            live: dict[str, Server] = {}
            failed: set[str] = set()
            for rep in range(1, cfg.runs + 1):
                for name in case_targets(case):
                    step += 1
                    label = f"[{step}/{total}] {case.name:20} {name:15} run {rep}"
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
                            if note is None and "resume" in case.tags:
                                try:
                                    tokens = logdir / f"tokens-{server.port}.bin"
                                    note = setup_tokens(server, tokens)
                                except (OSError, ValueError) as exc:
                                    note = f"token setup failed: {str(exc).splitlines()[0]}"
                            if note:
                                add_note(notes, case.name, name, note)
                    server = live[name]
                    try:
                        rec = runner(case, server, cfg, rep)
                    except (
                        RuntimeError,
                        subprocess.TimeoutExpired,
                        OSError,
                        ValueError,
                        TypeError,
                        http.client.HTTPException,
                    ) as exc:
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
        # the -before ones with --before
        choices=[*TARGETS, *(name for name, _ in BEFORE_TARGETS.values())],
        help="run only these targets (default: every case's own targets)",
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
    ap.add_argument(
        "--charts",
        action="store_true",
        help="with --report: also draw its ratio charts, PNGs beside the file (needs matplotlib)",
    )
    ap.add_argument(
        "--before",
        type=Path,
        metavar="DIR",
        help="also run trioserver-http, trioserver and trioserver-sqlite from DIR (a checkout "
        "of an earlier commit, e.g. from `git archive C trioserver | tar -x -C DIR`) as "
        "trioserver-http-before in every HTTP case and trioserver-before and "
        "trioserver-sqlite-before in the account cases: a before/after in the same run",
    )
    args = ap.parse_args(argv)
    if args.before:
        add_before_target(args.before.resolve())

    if args.report:
        doc = json.loads(args.report.read_text())
        m = doc["machine"]
        print(
            f"{doc['started']}: {m['cpu_model']}, {m['cores']} cores, kernel {m['kernel']}, "
            f"python {m['python']}; settings {doc['settings']}"
        )
        if any(name in doc["targets"] for name, _ in BEFORE_TARGETS.values()):
            add_before_target(None)
        summary = summarise_runs(doc["runs"])  # recomputed, so new columns apply to old files
        shown = [c for c in CASES if c.name in summary]
        print("\n".join(print_tables(summary, shown, list(doc["targets"]), doc["notes"])))
        if args.charts:
            return 0 if draw_charts(args.report, required=True) else 1
        return 0
    if args.charts:
        ap.error("--charts goes with --report FILE (a run draws its charts anyway)")

    if args.list:
        for c in CASES:
            state = "" if c.kind in RUNNERS else "  [no runner yet]"
            print(f"{c.name:22} {c.kind:8} {c.help}{state}")
            print(f"{'':31} targets: {' '.join(c.targets)}")
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

    runnable = [c for c in cases if c.kind in RUNNERS]
    for c in cases:
        if c.kind not in RUNNERS:
            print(f"{c.name}: no runner for kind {c.kind!r} yet, skipped", file=sys.stderr)
    wanted = set(args.targets or TARGETS)
    targets: list[str] = []
    notes: dict[str, dict[str, str]] = {}
    skipped: dict[str, str] = {}
    for name in dict.fromkeys(t for c in runnable for t in c.targets if t in wanted):
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
    print(f"code: {info['git']}")
    print(
        f"{cfg.runs} run(s) x {cfg.duration:g} s after {cfg.warmup:g} s warm-up; "
        f"servers on CPU {SERVER_CPU}, loadgen on CPU {LOAD_CPU} (the workers case pins "
        f"nothing); targets: {' '.join(targets)}"
    )

    records: list[dict[str, Any]] = []
    per: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def case_targets(case: Case) -> list[str]:
        return [t for t in case.targets if t in targets]

    total = sum(len(case_targets(c)) for c in runnable) * cfg.runs
    step = 0
    # Server logs stay on disk (their path is printed) so a failure can be looked into;
    # the HTTP files and nginx's configuration live there too.
    logdir = Path(tempfile.mkdtemp(prefix="trioserver-bench-logs-"))
    if any(c.kind == "http" for c in runnable):
        make_docroot(logdir)
    # SIGTERM (or a closed terminal) ends the run like Ctrl-C: every server is stopped.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)
    try:
        run_cases(runnable, case_targets, cfg, logdir, notes, records, per, step, total)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every server started", file=sys.stderr)
        stop_all()
        print(f"server logs: {logdir}", file=sys.stderr)
        return 130
    finally:
        stop_all()

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
    draw_charts(out)
    return 0


def draw_charts(results: Path, required: bool = False) -> bool:
    """The ratio charts of a results file, PNGs beside it (``charts.py``). Without
    matplotlib (a benchmark-only dependency) a run says so and still succeeds."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            "charts not drawn: matplotlib is missing (pip install -e '.[bench]')",
            file=sys.stderr if required else sys.stdout,
        )
        return False
    # A process of its own: charts.py reads this module's cases and ratios, so
    # importing it from here would tie the two modules in a circle.
    charts = Path(__file__).with_name("charts.py")
    done = subprocess.run([sys.executable, str(charts), str(results)])
    return done.returncode == 0


BEFORE = "trioserver-http-before"
#: The targets ``--before`` adds, by the target they copy, and the cases they join.
BEFORE_TARGETS = {
    "trioserver-http": (BEFORE, lambda c: c.kind == "http"),
    "trioserver": ("trioserver-before", lambda c: "accounts" in c.tags),
    "trioserver-sqlite": ("trioserver-sqlite-before", lambda c: "accounts" in c.tags),
}


def add_before_target(tree: Path | None) -> None:
    """trioserver-http, trioserver and trioserver-sqlite run from `tree`, beside this
    checkout's, in every HTTP case and every account case (None: only the cases' targets
    and ratios, to report a run made with ``--before``)."""
    global CASES
    if tree is not None and not (tree / "trioserver" / "__init__.py").is_file():
        sys.exit(f"--before {tree}: no trioserver/ package there")
    for original, (name, joins) in BEFORE_TARGETS.items():
        if any(name in c.targets for c in CASES):
            continue
        TARGETS[name] = replace(
            TARGETS[original],
            name=name,
            cwd=tree,
            description=f"{original} as above, its package from {tree or 'an earlier tree'}",
        )
        CASES = tuple(
            replace(
                c,
                targets=(*c.targets, name),
                ratios=(*c.ratios, (original, name)),
            )
            if joins(c) and original in c.targets
            else c
            for c in CASES
        )


def progress(case: Case, rec: dict[str, Any]) -> str:
    if case.kind == "idle":
        return (
            f"{rec['answered']:,}/{rec['connections']:,} answered, server RSS "
            f"{rec['rss_before_mib']:.1f} -> {rec['rss_after_mib']:.1f} MiB, "
            f"{fmt_num(rec['rss_per_conn_kib'], 2)} KiB/conn, errors {rec['errors']}"
        )
    if case.kind == "http":
        return (
            f"{rec['rps']:>10,.0f} req/s  p50 {fmt_num(rec['p50_us'], 1):>8} µs  p99 "
            f"{fmt_num(rec['p99_us'], 1):>8} µs  server {rec['server_cpu_pct']:5.1f}% CPU "
            f"({fmt_num(rec['server_us_per_req'], 2)} µs/req)  wrk {rec['loadgen_cpu_pct']:5.1f}%"
            f"  RSS {fmt_num(rec['rss_mib_per_worker'], 1)} MiB  last response closed in "
            f"{fmt_num(rec['last_response_close_ms'], 1)} ms  errors {rec['errors']}"
        )
    extra = ""
    if "worker_cpu_share" in rec:
        extra = ", worker CPU " + "/".join(f"{x:.0%}" for x in rec["worker_cpu_share"])
    if "result_ok_fraction" in rec:
        extra += f", result 0 for {rec['result_ok_fraction']:.0%}"
    return (
        f"{rec['rps']:>10,.0f} req/s  p50 {rec['p50_us']:8.1f} µs  p99 {rec['p99_us']:8.1f} µs"
        f"  server {rec['server_cpu_pct']:5.1f}% CPU ({fmt_num(rec['server_us_per_req'], 2)}"
        f" µs/req)  loadgen {rec['loadgen_cpu_pct']:5.1f}%  errors {rec['errors']}{extra}"
    )


if __name__ == "__main__":
    sys.exit(main())
