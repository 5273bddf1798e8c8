"""trioserver's HTTP static files beside nginx, in one run, on the same files (TARGETS.md).

    apt-get install -y nginx wrk
    python benchmarks/http_bench.py [--duration 10] [--connections 100]

Each server gets one worker pinned to CPU 0 (``taskset -c 0``); wrk runs on CPU 1
(``-t1 -cN``). Loads: a 1 KiB index.html with keep-alive, the same with
``Connection: close``, and a 1 MiB file with keep-alive. nginx runs with sendfile on
and access_log off; trioserver with every feature on (cache with stat checks,
conditional and range support, timeouts) and the access log off. Everything
listens on 127.0.0.1 only; each server is stopped by its own PID.

``--serve PORT ROOT`` runs one trioserver HTTP worker in the foreground (what the
benchmark starts); the worker's own HTTP listener replaces it once it exists. A
third column runs a bare trio + httptools loop with no features: the ceiling for
anything on trio on this machine.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
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
        listen 127.0.0.1:{port};
        root {root};
        index index.html;
    }}
}}
"""


def serve(port: int, root: str) -> None:
    """One trioserver HTTP worker on 127.0.0.1:port (the benchmark's subprocess)."""
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


def serve_bare(port: int, root: str) -> None:
    """The ceiling on this machine: trio + httptools, cached bytes, no features (TARGETS.md)."""
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
                    out = []
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


def run_wrk(port: int, path: str, args: argparse.Namespace, close: bool) -> tuple[float, str]:
    cmd = [
        "taskset", "-c", "1", "wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s",
        "--latency", f"http://127.0.0.1:{port}{path}",
    ]  # fmt: skip
    if close:
        cmd[4:4] = ["-H", "Connection: close"]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=args.duration + 30, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print(f"  wrk reported: {errors.group(0)}", file=sys.stderr)
    return rps, p99.group(1) if p99 else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "ROOT"))
    parser.add_argument("--serve-bare", nargs=2, metavar=("PORT", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1])
        return
    if args.serve_bare:
        serve_bare(int(args.serve_bare[0]), args.serve_bare[1])
        return
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is missing: apt-get install -y nginx wrk")

    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp:
        os.chmod(tmp, 0o755)  # nginx's workers run as an unprivileged user
        docroot = Path(tmp) / "www"
        docroot.mkdir()
        page = b"<!doctype html><title>bench</title>" + b"x" * (1024 - 36)
        (docroot / "index.html").write_bytes(page[:1024])
        (docroot / "1m.bin").write_bytes(os.urandom(1 << 20))
        nginx_port, trio_port, bare_port = free_port(), free_port(), free_port()
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=nginx_port, root=docroot))
        nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
        servers = {
            "nginx": ["taskset", "-c", "0", nginx_bin, "-c", str(conf), "-p", tmp],
            "trioserver": [
                "taskset", "-c", "0", sys.executable, __file__,
                "--serve", str(trio_port), str(docroot),
            ],
            "bare": [
                "taskset", "-c", "0", sys.executable, __file__,
                "--serve-bare", str(bare_port), str(docroot),
            ],
        }  # fmt: skip
        ports = {"nginx": nginx_port, "trioserver": trio_port, "bare": bare_port}
        loads = [
            ("1 KiB keep-alive", "/index.html", False),
            ("1 KiB Connection: close", "/index.html", True),
            ("1 MiB keep-alive", "/1m.bin", False),
        ]
        results: dict[tuple[str, str], tuple[float, str]] = {}
        memory: dict[str, float] = {}
        for name, cmd in servers.items():
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                wait_listening(ports[name], proc)
                check_files(ports[name], docroot)
                for label, path, close in loads:
                    print(f"{name}: {label} ...", file=sys.stderr)
                    results[name, label] = run_wrk(ports[name], path, args, close)
                memory[name] = rss_mb(proc.pid)
            finally:
                proc.send_signal(signal.SIGQUIT if name == "nginx" else signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s, server on CPU 0, wrk on CPU 1\n")
    print(
        "| load | nginx req/s | nginx p99 | trioserver req/s | trioserver p99 | ratio "
        "| bare trio+httptools req/s |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, _, _ in loads:
        n_rps, n_p99 = results["nginx", label]
        t_rps, t_p99 = results["trioserver", label]
        b_rps, _ = results["bare", label]
        print(
            f"| {label} | {n_rps:,.0f} | {n_p99} | {t_rps:,.0f} | {t_p99} | "
            f"{t_rps / n_rps:.2f}x | {b_rps:,.0f} |"
        )
    print(
        f"\nRSS after the run: nginx {memory.get('nginx', 0):.1f} MB (master + worker), "
        f"trioserver {memory.get('trioserver', 0):.1f} MB"
    )


if __name__ == "__main__":
    main()
