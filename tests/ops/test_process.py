"""Metrics of a real master with 2 worker processes: a scripted session, a kill, the status table.

Waiting is bounded polling of the admin page (every 20 ms, with a deadline),
never a fixed sleep: workers report every 0.1 s here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from trioserver.client import BlockingClient, ConnectionClosed
from trioserver.framer import PING, encode_header

from ..polling import wait_for as _wait_for
from ..processes import free_port

parser = pytest.importorskip("prometheus_client.parser")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent.parent
Key = tuple[str, tuple[tuple[str, str], ...]]


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 15.0) -> T:
    return _wait_for(what, check, timeout)


class Running:
    def __init__(self, tmp: Path) -> None:
        self.port, self.http, self.admin = free_port(), free_port(), free_port()
        self.tmp = tmp
        self.log = tmp / "server.log"
        self.pidfile = tmp / "server.pid"
        (tmp / "site").mkdir()
        (tmp / "site" / "index.html").write_text("hi\n")
        args = [
            sys.executable, "-m", "trioserver", "serve", "--workers", "2",
            "--listen", f"127.0.0.1:{self.port}", "--pidfile", str(self.pidfile),
            "--set", f'http.listen=["127.0.0.1:{self.http}"]',
            "--set", f'http.document_root="{tmp / "site"}"',
            "--set", f'metrics.listen="127.0.0.1:{self.admin}"',
            "--set", "metrics.interval=0.1",
            "--set", "metrics.log_interval=0.5",
            "--set", f'logging.file="{self.log}"',
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(tmp / "stderr.txt", "wb") as stderr:
            self.proc = subprocess.Popen(
                args, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=stderr,
                start_new_session=True,
            )  # fmt: skip
        self.pids: set[int] = set()

    def get(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.admin}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def page(self) -> dict[Key, float]:
        _, body = self.get("/metrics")
        out = {}
        for family in parser.text_string_to_metric_families(body.decode()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        for (name, labels), _ in out.items():
            if name == "trioserver_worker_info":
                self.pids.add(int(dict(labels)["pid"]))
        return out

    def kill_all(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)


def total(page: dict[Key, float], name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in page.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Running]:
    running = Running(tmp_path)
    try:
        wait_for("the admin listener", lambda: _answers(running))
        wait_for("2 workers ready", lambda: "serving: 2 workers ready" in _text(running.log))
        yield running
    finally:
        running.kill_all()


def _answers(running: Running) -> bool:
    try:
        return running.get("/healthz")[0] == 200
    except OSError:
        return False


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def http_get(port: int, path: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return int(reply.split()[1])


def session(port: int, http: int) -> None:
    """20 pings on 4 connections, a bad CRC then a ping, a flood of 11 pings, one HTTP 404."""
    for _ in range(4):
        with BlockingClient.connect("127.0.0.1", port) as client:
            for _ in range(5):
                client.ping()
    with BlockingClient.connect("127.0.0.1", port) as client:
        body = b"hello"
        header = bytearray(encode_header(7, body))
        header[4:8] = (int.from_bytes(header[4:8], "big") ^ 1).to_bytes(4, "big")
        client.sock.sendall(bytes(header) + body)
        client.ping()  # answered: the bad packet was dropped, the connection kept
    with BlockingClient.connect("127.0.0.1", port) as client:
        client.sock.sendall(PING * 11)  # the 11th within 100 ms is a flood (the defaults)
        answered = 0
        with pytest.raises(ConnectionClosed):
            while True:
                client.receive_packet()
                answered += 1
        assert answered == 10
    assert http_get(http, "/no-such-file") == 404


EXPECTED = {
    ("trioserver_packets_total", "code", "0"): 20 + 1 + 11,
    ("trioserver_packets_total", "code", "unknown"): 1,  # 7 is not served
    ("trioserver_drops_total", "reason", "bad_crc"): 1,
    ("trioserver_kicks_total", "reason", "flood"): 1,
    ("trioserver_http_requests_total", "status", "404"): 1,
}


def figures(page: dict[Key, float]) -> dict[tuple[str, str, str], float]:
    out = {key: total(page, key[0], **{key[1]: key[2]}) for key in EXPECTED}
    out["drops", "all", ""] = total(page, "trioserver_drops_total")
    out["kicks", "all", ""] = total(page, "trioserver_kicks_total")
    out["http", "all", ""] = total(page, "trioserver_http_requests_total")
    out["accepted", "all", ""] = total(page, "trioserver_connections_accepted_total")
    return out


WANT = {**EXPECTED, ("drops", "all", ""): 1, ("kicks", "all", ""): 1, ("http", "all", ""): 1}
WANT["accepted", "all", ""] = 4 + 1 + 1 + 1  # six binary connections and one HTTP


def test_session_counts_exactly_and_survive_a_kill(server: Running) -> None:
    session(server.port, server.http)

    def settled() -> dict[Key, float] | None:
        page = server.page()
        # Gauges settle last: the flood connection's close is counted once it is closed.
        return page if figures(page) == WANT else None

    page = wait_for("the session's counts on the page", settled)
    assert total(page, "trioserver_worker_processes") == 2
    assert {dict(ls)["worker"] for n, ls in page if n == "trioserver_worker_up"} == {"1", "2"}
    counters = {k: v for k, v in page.items() if k[0].endswith(("_total", "_count", "_bucket"))}
    # Handler latency: the first batch of each worker is timed, so ping has samples.
    assert total(page, "trioserver_handler_seconds_count", code="0") >= 1
    wait_for(
        "lag probes from both workers",
        lambda: all(
            total(server.page(), "trioserver_event_loop_lag_seconds_count", worker=w) >= 1
            for w in ("1", "2")
        ),
    )

    # Kill the busier worker with SIGKILL; scrape all along; nothing may go backwards.
    info = [dict(ls) for n, ls in page if n == "trioserver_worker_info"]
    busiest = max(info, key=lambda i: total(page, "trioserver_packets_total", worker=i["worker"]))
    os.kill(int(busiest["pid"]), signal.SIGKILL)
    pages = []

    def respawned() -> bool:
        now = server.page()
        pages.append(now)
        slot = busiest["worker"]
        return (
            total(now, "trioserver_worker_starts_total", worker=slot) == 2
            and total(now, "trioserver_worker_up", worker=slot) == 1
            and total(now, "trioserver_worker_processes") == 2
        )

    wait_for("the killed worker's replacement reporting", respawned)
    for later in pages:
        for key, value in counters.items():
            assert later.get(key, 0) >= value, f"{key} went from {value} to {later.get(key)}"
    assert figures(pages[-1]) == WANT  # its last report was kept, exactly

    # The new process adds to its slot's totals.
    def more() -> bool:
        with BlockingClient.connect("127.0.0.1", server.port) as client:
            client.ping()
        return True

    for _ in range(6):  # both slots get some, most likely; the sum is what is checked
        more()
    wait_for(
        "six more pings counted",
        lambda: total(server.page(), "trioserver_packets_total", code="0") == 32 + 6,
    )

    # The summary line in the log (the master writes one every 0.5 s here: wait for the
    # first that has the session's counts), and the status table from the same source.
    wait_for(
        "a summary line with the session's drops and kicks",
        lambda: re.search(
            r"stats: 2 workers; .* drops 1 \(bad_crc 1\); kicks 1 \(flood 1\)", _text(server.log)
        ),
    )
    out = subprocess.run(
        [sys.executable, "-m", "trioserver", "status", "--pidfile", str(server.pidfile),
         "--admin", f"127.0.0.1:{server.admin}"],
        env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].split()[:4] == ["worker", "pid", "up", "open"]
    rows = {line.split()[0]: line.split() for line in lines[2:5]}
    assert set(rows) == {"1", "2", "all"}
    heading = lines[1].split()
    packets_col = heading.index("packets") - 2  # the "all" row has no pid and no age
    assert rows["all"][packets_col] == "39"  # 38 pings and the bad-CRC packet
    assert "health: serving" in lines[-1]


def test_healthz_turns_503_while_draining(server: Running) -> None:
    # A response still being sent keeps its worker draining (an idle connection would
    # close at once): a file far larger than the socket buffers, and a client that
    # does not read it.
    with open(server.tmp / "site" / "big.bin", "wb") as big:
        big.truncate(256 * 1024 * 1024)
    client = socket.create_connection(("127.0.0.1", server.http), timeout=5)
    try:
        client.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.recv(12) == b"HTTP/1.1 200"  # the response has begun
        os.kill(server.proc.pid, signal.SIGTERM)
        wait_for("503 from /healthz", lambda: server.get("/healthz") == (503, b"draining\n"))
        assert server.page()[("trioserver_healthy", ())] == 0
    finally:
        client.close()
    assert server.proc.wait(20) == 0


def test_healthz_is_answered_with_a_thousand_idle_admin_connections(server: Running) -> None:
    idle = []
    try:
        for _ in range(1000):
            idle.append(socket.create_connection(("127.0.0.1", server.admin), timeout=5))
        with socket.create_connection(("127.0.0.1", server.admin), timeout=5) as probe:
            probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while chunk := probe.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"serving\n")
    finally:
        for sock in idle:
            sock.close()


def test_process_figures_for_the_master_and_each_worker(server: Running) -> None:
    # A worker just forked has often used less than one clock tick of CPU (what /proc
    # counts in): wait until each shows some, as it soon does, serving its timers.
    workers = [(("process", "worker"), ("worker", w)) for w in ("1", "2")]

    def busy() -> dict[Key, float] | None:
        page = server.page()
        return page if all(page[("process_cpu_seconds_total", k)] > 0 for k in workers) else None

    page = wait_for("CPU time for both workers", busy)
    master = (("process", "master"),)
    assert page["process_cpu_seconds_total", master] > 0
    assert page["process_resident_memory_bytes", master] > 1_000_000
    assert page["process_open_fds", master] >= 3
    for worker in ("1", "2"):
        labels = (("process", "worker"), ("worker", worker))
        # Forked after the master's imports, a worker may not have used a clock tick yet:
        # the series must be there, its value may still be 0.
        assert page["process_cpu_seconds_total", labels] >= 0
        assert page["process_resident_memory_bytes", labels] > 1_000_000
        assert page["process_open_fds", labels] >= 3
    status = json.loads(server.get("/status.json")[1])
    assert status["master"]["pid"] == server.proc.pid
    assert all(w["open_fds"] >= 3 for w in status["workers"])
