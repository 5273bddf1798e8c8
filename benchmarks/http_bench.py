"""trioserver's HTTP static files beside nginx, in one run, on the same files.

The goals they are measured against are in benchmarks/README.md.

    apt-get install -y nginx wrk
    python benchmarks/http_bench.py [--duration 10] [--connections 100] [--repeat 1]
    python benchmarks/http_bench.py --quick        # 3 s per load, keep-alive only

Each server gets one worker pinned to CPU 0 (``taskset -c 0``); wrk runs on CPU 1
(``-t1 -cN``). Loads: a 1 KiB index.html with keep-alive, the same with
``Connection: close``, and a 1 MiB file with keep-alive. nginx runs with sendfile on
and access_log off; trioserver with every feature on (cache with stat checks,
conditional and range support, timeouts) and the access log off. Everything
listens on 127.0.0.1 only; each server is stopped by its own PID.

Besides req/s and p99 it prints the server's CPU time per request (utime + stime
from /proc of the server and its children, over the wrk run, divided by the
requests wrk counted): on a shared, noisy machine this per-CPU cost is the number
to compare, and req/s ratios follow it only while the server's core is saturated.
``--repeat N`` runs every load N times and reports medians.

``--serve PORT ROOT`` runs one trioserver worker (``trioserver.worker.Worker``, HTTP
listener only, raw-socket fast path) in the foreground: what the benchmark starts.
``--servers`` picks columns; ``stream`` is the trio-stream adapter
(``serve_http_connection`` under ``trio.serve_listeners``), ``bare`` a trio +
httptools loop with no features: the ceiling for anything on trio on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trio

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 15s;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ text/html html; application/octet-stream bin; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
        index index.html;
    }}
}}
"""
#: Added to NGINX_CONF's http block for nginx with its open-file cache (run.py nginx-cache).
NGINX_OPEN_FILE_CACHE = """\
    open_file_cache max=1000 inactive=60s;
    open_file_cache_valid 60s;
    open_file_cache_min_uses 1;
"""


def serve(port: int, root: str) -> None:
    """One trioserver worker serving HTTP on 127.0.0.1:port (the benchmark's subprocess)."""
    import trio

    sys.path.insert(0, str(ROOT))
    from trioserver.config import Address, Config
    from trioserver.worker import Worker, open_listeners, serve_until_signalled

    config = Config().replace(
        http__document_root=Path(root), server__max_connections=4096, server__backlog=4096
    )

    async def main() -> None:
        http = await open_listeners([Address("127.0.0.1", port)], 4096)
        await serve_until_signalled(Worker(config, listeners=[], http_listeners=http))

    trio.run(main)


def serve_stream(port: int, root: str) -> None:
    """The trio-stream adapter alone: ``serve_http_connection`` on trio's SocketStreams."""
    import trio

    sys.path.insert(0, str(ROOT))
    from trioserver.config import HttpSettings
    from trioserver.http import StaticSite, serve_http_connection

    settings = HttpSettings(document_root=Path(root))
    site = StaticSite.from_settings(settings)

    async def handle(stream: trio.SocketStream) -> None:
        await serve_http_connection(stream, site, settings)

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1", backlog=4096)
        await trio.serve_listeners(handle, listeners)

    trio.run(main)


def bare_handler(root: str) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """The bare baseline's connection handler: trio + httptools, cached bytes, no features."""
    import httptools
    import trio

    files = {f"/{p.name}".encode(): p.read_bytes() for p in Path(root).iterdir()}
    heads = {k: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(v) for k, v in files.items()}

    class Requests:
        def __init__(self) -> None:
            self.urls: list[bytes] = []
            self.close = False

        def on_url(self, url: bytes) -> None:
            self.urls.append(url)

    async def handle(stream: trio.SocketStream) -> None:
        requests = Requests()
        parser = httptools.HttpRequestParser(requests)
        try:
            while data := await stream.receive_some(65536):
                parser.feed_data(data)
                if requests.urls:
                    out: list[bytes] = []
                    for url in requests.urls:
                        out += (heads[url], files[url])
                    requests.urls.clear()
                    await stream.send_all(b"".join(out))
                    if not parser.should_keep_alive():
                        return
        except (trio.BrokenResourceError, httptools.HttpParserError):
            pass
        finally:
            await stream.aclose()

    return handle


def serve_bare(port: int, root: str) -> None:
    """The ceiling on this machine: trio + httptools, cached bytes, no features."""
    import trio

    handle = bare_handler(root)

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1", backlog=4096)
        await trio.serve_listeners(handle, listeners)

    trio.run(main)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def check_files(port: int, docroot: Path) -> None:
    """Both servers must really serve the files (a benchmark of 403s proves nothing)."""
    for name in ("index.html", "1m.bin"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"/{name}")
        response = conn.getresponse()
        body = response.read()
        conn.close()
        if response.status != 200 or body != (docroot / name).read_bytes():
            raise RuntimeError(f"127.0.0.1:{port}/{name} answered {response.status}")


def rss_mb(pid: int) -> float:
    """Resident memory of pid and its children (nginx: master + worker)."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total / 1e6


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid and its children (nginx: master + worker), in seconds."""
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    ticks = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def run_wrk(
    port: int, path: str, args: argparse.Namespace, close: bool, pid: int
) -> tuple[float, str, float]:
    """(req/s, p99, server CPU µs per request) of one wrk run."""
    cmd = [
        "taskset", "-c", "1", "wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s",
        "--latency", f"http://127.0.0.1:{port}{path}",
    ]  # fmt: skip
    if close:
        cmd[4:4] = ["-H", "Connection: close"]
    cpu_before = cpu_seconds(pid)
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=args.duration + 30, check=True
    ).stdout
    cpu = cpu_seconds(pid) - cpu_before
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print(f"  wrk reported: {errors.group(0)}", file=sys.stderr)
    return rps, p99.group(1) if p99 else "?", cpu / max(count, 1) * 1e6


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=1, help="runs per load; medians reported")
    parser.add_argument("--quick", action="store_true", help="3 s runs, no Connection: close load")
    parser.add_argument(
        "--servers", default="nginx,trioserver,bare", help="comma-separated: nginx,trioserver,"
        "stream,bare (stream: the trio-stream adapter without the worker)",
    )  # fmt: skip
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "ROOT"))
    parser.add_argument("--serve-stream", nargs=2, metavar=("PORT", "ROOT"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", nargs=2, metavar=("PORT", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    for option, function in (
        (args.serve, serve), (args.serve_stream, serve_stream), (args.serve_bare, serve_bare)
    ):  # fmt: skip
        if option:
            function(int(option[0]), option[1])
            return
    if args.quick:
        args.duration = min(args.duration, 3)
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is missing: apt-get install -y nginx wrk")

    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    loads = [
        ("1 KiB keep-alive", "/index.html", False),
        ("1 KiB Connection: close", "/index.html", True),
        ("1 MiB keep-alive", "/1m.bin", False),
    ]
    if args.quick:
        loads = [loads[0], loads[2]]
    runs: dict[tuple[str, str], list[tuple[float, str, float]]] = {}
    memory: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp:
        os.chmod(tmp, 0o755)  # nginx's workers run as an unprivileged user
        docroot = Path(tmp) / "www"
        docroot.mkdir()
        page = b"<!doctype html><title>bench</title>" + b"x" * (1024 - 36)
        (docroot / "index.html").write_bytes(page[:1024])
        (docroot / "1m.bin").write_bytes(os.urandom(1 << 20))
        ports = {name: free_port() for name in names}
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=ports.get("nginx", 0), root=docroot))
        nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
        pin = ["taskset", "-c", "0"]
        commands = {
            "nginx": [*pin, nginx_bin, "-c", str(conf), "-p", tmp],
            "trioserver": [*pin, sys.executable, __file__, "--serve"],
            "stream": [*pin, sys.executable, __file__, "--serve-stream"],
            "bare": [*pin, sys.executable, __file__, "--serve-bare"],
        }
        for repeat in range(args.repeat):
            for name in names:
                cmd = commands[name]
                if name != "nginx":
                    cmd = [*cmd, str(ports[name]), str(docroot)]
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                try:
                    wait_listening(ports[name], proc)
                    check_files(ports[name], docroot)
                    for label, path, close in loads:
                        print(f"[{repeat + 1}/{args.repeat}] {name}: {label} ...", file=sys.stderr)
                        result = run_wrk(ports[name], path, args, close, proc.pid)
                        runs.setdefault((name, label), []).append(result)
                    memory[name] = rss_mb(proc.pid)
                finally:
                    proc.send_signal(signal.SIGQUIT if name == "nginx" else signal.SIGTERM)
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()

    print(
        f"\nwrk -t1 -c{args.connections} -d{args.duration}s, server on CPU 0, wrk on CPU 1, "
        f"median of {args.repeat}\n"
    )
    print("| load | server | req/s | p99 | CPU µs/req | req/s vs nginx | CPU/req vs nginx |")
    print("|---|---|---|---|---|---|---|")
    for label, _, _ in loads:
        base = runs.get(("nginx", label))
        base_rps = median([r[0] for r in base]) if base else 0.0
        base_cpu = median([r[2] for r in base]) if base else 0.0
        for name in names:
            results = runs[name, label]
            rps = median([r[0] for r in results])
            cpu = median([r[2] for r in results])
            p99 = sorted(results)[len(results) // 2][1]
            ratio = f"{rps / base_rps:.2f}x" if base_rps else "-"
            cpu_ratio = f"{cpu / base_cpu:.2f}x" if base_cpu else "-"
            print(f"| {label} | {name} | {rps:,.0f} | {p99} | {cpu:.1f} | {ratio} | {cpu_ratio} |")
    print(
        "\nRSS after the run: "
        + ", ".join(f"{name} {mb:.1f} MB" for name, mb in memory.items())
        + " (nginx: master + worker)"
    )


if __name__ == "__main__":
    main()
