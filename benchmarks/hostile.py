"""Re-run hostile-client attacks against a real server and print the figure each one moves.

::

    python benchmarks/hostile.py metrics     # /metrics size before and after 76,000 unknown codes
    python benchmarks/hostile.py admin       # /healthz time with 1,000 idle admin connections
    python benchmarks/hostile.py logflood    # log bytes per minute under a garbage flood
    python benchmarks/hostile.py http        # statuses for Host, If-Modified-Since, fragments
    python benchmarks/hostile.py proxyunix   # the peer a UNIX-family PROXY v2 header gets
    python benchmarks/hostile.py idlepool    # new binary clients under 16,000 idle HTTP ones

Each case starts ``python -m trioserver`` (2 workers, loopback, port 0) in a temporary
directory with a session of its own, drives it from this process on 127.0.0.1 only,
and stops it by its pid (SIGTERM, then SIGKILL after 5 s). Every phase is bounded in
time. Not a test: it prints figures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import os
import platform
import random
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def packet(code: int, body: bytes = b"", *, bad_crc: bool = False) -> bytes:
    crc = zlib.crc32(body) ^ (1 if bad_crc else 0)
    return struct.pack(">HHI", 8 + len(body), code, crc) + body


@contextlib.contextmanager
def server(tmp: Path, *settings: str) -> Iterator[tuple[int, tuple[str, int], Path]]:
    """A running master: (binary port, admin address, log file)."""
    log = tmp / "server.log"
    admin_port = free_port()
    args = [
        sys.executable, "-m", "trioserver", "serve", "--listen", "127.0.0.1:0", "--workers", "2",
        "--set", f'logging.file="{log}"', "--set", f'metrics.listen="127.0.0.1:{admin_port}"',
        "--set", "http.listen=[]", "--set", "metrics.interval=0.5",
    ]  # fmt: skip
    for setting in settings:
        args += ["--set", setting]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        args, cwd=tmp, env=env, start_new_session=True, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 15
        while "serving: 2 workers ready" not in _text(log):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the server did not start:\n{_text(log)}")
            time.sleep(0.02)
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", _text(log))
        assert found is not None
        yield int(found.group(1)), ("127.0.0.1", admin_port), log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(address: tuple[str, int], path: str, timeout: float = 10.0) -> tuple[float, bytes]:
    """(seconds to the whole answer, the answer)."""
    start = time.perf_counter()
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return time.perf_counter() - start, b"".join(chunks)


def send_and_close(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.sendall(packet(0))  # a ping after the rest: its answer means all was read
        sock.recv(64)


def case_metrics(tmp: Path) -> None:
    with server(tmp, "connection.flood_check=false") as (port, admin, _):
        before = len(http_get(admin, "/metrics")[1])
        codes = list(range(1000, 65536))
        sent = 0
        while sent < 76_000:
            chunk = codes[sent % len(codes) : sent % len(codes) + 1000][: 76_000 - sent]
            send_and_close(port, b"".join(packet(code) for code in chunk))
            sent += len(chunk)
        time.sleep(1.5)  # three report intervals: the workers' reports reach the master
        seconds, page = http_get(admin, "/metrics")
        series = page.count(b"\ntrioserver_packets_total{")
        print(
            f"metrics: {sent} packets of unknown codes; /metrics {before} -> {len(page)} bytes, "
            f"{series} packets_total series, fetched in {seconds * 1000:.0f} ms"
        )


def case_admin(tmp: Path) -> None:
    with server(tmp) as (_, admin, _):
        quiet = sorted(http_get(admin, "/healthz")[0] for _ in range(20))
        idle = []
        try:
            for _ in range(int(os.environ.get("HOSTILE_IDLE", "1000"))):
                idle.append(socket.create_connection(admin, timeout=30))
            times = []
            for _ in range(int(os.environ.get("HOSTILE_PROBES", "20"))):
                seconds, reply = http_get(admin, "/healthz", timeout=30)
                assert reply.endswith(b"serving\n"), reply
                times.append(seconds)
        finally:
            for sock in idle:
                sock.close()
        times.sort()
        median = times[len(times) // 2]
        print(
            f"admin: /healthz median {quiet[10] * 1000:.1f} ms idle-free; with {len(idle)} idle "
            f"admin connections median {median * 1000:.1f} ms, max {times[-1] * 1000:.1f} ms"
        )


def garbage_client(port: int, stop: float, seed: int) -> int:
    """Connections sending random bytes and bad-CRC packets until ``stop``; how many opened."""
    rng = random.Random(seed)
    opened = 0
    while time.monotonic() < stop:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                opened += 1
                if rng.random() < 0.5:
                    sock.sendall(rng.randbytes(64))  # a header of noise: closed at once
                else:
                    bad = b"".join(
                        packet(rng.randrange(65536), b"xy", bad_crc=True) for _ in range(20)
                    )
                    sock.sendall(bad + packet(0) * 12)  # dropped packets, then a flood
                sock.settimeout(0.05)
                with contextlib.suppress(OSError):
                    while sock.recv(65536):
                        pass
        except OSError:
            pass
    return opened


def case_logflood(tmp: Path) -> None:
    seconds = float(os.environ.get("HOSTILE_SECONDS", "20"))
    with server(tmp) as (port, _, log):
        start_size = log.stat().st_size
        stop = time.monotonic() + seconds
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            opened = sum(pool.map(lambda seed: garbage_client(port, stop, seed), range(8)))
        time.sleep(0.5)  # the last lines reach the file
        text = log.read_text(errors="replace")[start_size:]
    lines = text.count("\n")
    per_minute = (len(text.encode()) / seconds) * 60
    print(
        f"logflood: {opened} garbage connections in {seconds:.0f} s; log +{lines} lines, "
        f"{len(text.encode())} bytes: {per_minute / 1e6:.2f} MB/min"
    )
    kinds = collections.Counter(
        re.sub(r"\d+", "N", line.split(": ", 1)[-1])[:70] for line in text.splitlines()
    )
    for kind, count in kinds.most_common(6):
        print(f"  {count:7d}  {kind}")
    for line in [ln for ln in text.splitlines() if "suppressed" in ln][:3]:
        print("  ", line[:240])


def raw_status(port: int, request: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        reply = sock.recv(65536)
    return reply.split(b"\r\n", 1)[0].decode()


def case_http(tmp: Path) -> None:
    port = free_port()
    with server(tmp, f'http.listen=["127.0.0.1:{port}"]') as _:
        future = "Fri, 01 Jan 2100 00:00:00 GMT"
        probes = {
            "no Host": b"GET / HTTP/1.1\r\n\r\n",
            "two Host": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "future If-Modified-Since": (
                f"GET / HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: {future}\r\n\r\n".encode()
            ),
            "#fragment": b"GET /#top HTTP/1.1\r\nHost: x\r\n\r\n",
        }
        for name, request in probes.items():
            print(f"http: {name:26} -> {raw_status(port, request)}")


def case_proxyunix(tmp: Path) -> None:
    with server(tmp, 'server.proxy_protocol="v2"') as (port, _, log):
        signature = b"\r\n\r\n\x00\r\nQUIT\n"
        header = signature + bytes([0x21, 0x31]) + struct.pack(">H", 216) + bytes(216)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(header + struct.pack(">HHI", 3, 0, 0))  # then a bad header: kicked
            sock.recv(64)
        deadline = time.monotonic() + 5
        while not (found := re.search(r"closed (\S+) \(conn", _text(log))):
            if time.monotonic() > deadline:
                raise RuntimeError("no kick line in the log")
            time.sleep(0.02)
        print(f"proxyunix: a UNIX-family header with empty addresses -> peer {found.group(1)!r}")


def open_idle_http(port: int, count: int, stop: float) -> list[socket.socket]:
    """``count`` keep-alive HTTP connections, each after one answered request (the ones
    the server turned away are closed and not returned)."""
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    opened: list[socket.socket] = []
    for _ in range(count):
        if time.monotonic() > stop:
            break
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(request)
        except OSError:
            continue
        opened.append(sock)
    kept = []
    for sock in opened:  # read each answer: 200 stays open (keep-alive), 503 closes
        try:
            head = sock.recv(65536)
        except OSError:
            head = b""
        if head.startswith(b"HTTP/1.1 200"):
            kept.append(sock)
        else:
            sock.close()
    return kept


def binary_clients(port: int, count: int) -> tuple[list[socket.socket], int]:
    """``count`` new binary clients that connect and ping: (the answered, held open; refused)."""
    held, refused = [], 0
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(packet(0))
            if len(sock.recv(64)) >= 8:
                held.append(sock)
                continue
            sock.close()
        except OSError:
            pass
        refused += 1
    return held, refused


def case_idlepool(tmp: Path) -> None:
    idle = int(os.environ.get("HOSTILE_IDLE", "16000"))
    clients = int(os.environ.get("HOSTILE_CLIENTS", "500"))
    pool = int(os.environ.get("HOSTILE_POOL", str(idle // 2)))  # per worker: 2 hold all idle
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = idle + clients + 200
    if soft < want:  # the server's workers inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(want, soft)), hard))
    print(
        f"idlepool: machine {platform.machine()} {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}; open-file limit "
        f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}; 2 workers x max_connections {pool}"
    )
    runs = {
        "no cap, keep_alive_reserve 0": (
            "server.max_connections_per_network=0", "http.keep_alive_reserve=0.0",
        ),
        "cap, loopback not exempt, reserve 0": (
            "server.connection_cap_exempt=[]", "http.keep_alive_reserve=0.0",
        ),
        "no cap, reserve default (5 %)": ("server.max_connections_per_network=0",),
        "defaults, loopback not exempt": ("server.connection_cap_exempt=[]",),
        "defaults (loopback exempt)": (),
    }  # fmt: skip
    for name, settings in runs.items():
        port = free_port()
        with contextlib.ExitStack() as stack:
            run = tmp / f"run{len(list(tmp.iterdir()))}"
            run.mkdir()
            stack.enter_context(
                server(
                    run,
                    f'http.listen=["127.0.0.1:{port}"]',
                    f"server.max_connections={pool}",
                    # The attacker's connections stay for the run, as ones re-opened as
                    # they expire would: the timeouts are not what is measured here.
                    "http.keep_alive_timeout=600.0",
                    "http.header_timeout=600.0",
                    *settings,
                )
            )
            start = time.monotonic()
            kept = open_idle_http(port, idle, start + 120)
            for sock in kept:
                stack.callback(sock.close)
            opened_in = time.monotonic() - start
            held, refused = binary_clients(stack.enter_context(_port_of(run)), clients)
            for sock in held:
                stack.callback(sock.close)
            time.sleep(0.5)  # the closes of idle connections given up reach this side
            still = sum(_still_open(sock) for sock in kept)
            print(
                f"  {name:36} idle HTTP answered {len(kept):6d}/{idle} (in {opened_in:.1f} s), "
                f"{still} still open; "
                f"new binary clients refused {refused}/{clients} ({100 * refused / clients:.0f} %)"
            )


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)  # with a timeout set, recv would first wait that long
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _port_of(run: Path) -> Iterator[int]:
    found = re.search(r"listening on 127\.0\.0\.1:(\d+)", _text(run / "server.log"))
    assert found is not None
    yield int(found.group(1))


CASES = {
    "metrics": case_metrics,
    "admin": case_admin,
    "logflood": case_logflood,
    "http": case_http,
    "proxyunix": case_proxyunix,
    "idlepool": case_idlepool,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="*", choices=[*CASES, []], default=list(CASES))
    args = parser.parse_args()
    for name in args.cases or CASES:
        with tempfile.TemporaryDirectory(prefix=f"hostile-{name}-") as tmp:
            CASES[name](Path(tmp))


if __name__ == "__main__":
    main()
