"""The master with real processes on loopback: spread, respawn, reload, stop, daemon, boot failure.

Each test starts ``python -m trioserver`` in its own session and kills whatever is
left of it by pid at the end, even on failure.
"""

from __future__ import annotations

import collections
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from real_server import Server, ask_who, env, wait_for
from sample_apps import BLOCK, SLOW_WHO

from trioserver.framer import FrameDecoder, Packet, encode
from trioserver.prefork.pidfile import process_alive, read_pid

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

BASE = ["--listen", "127.0.0.1:0", "--app", "sample_apps:who_router"]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    made: list[Server] = []
    yield made
    for server in made:
        server.kill_all()


def start(servers: list[Server], tmp: Path, *args: str, config: str = "") -> Server:
    server = Server(tmp, [*BASE, *args], config=config)
    servers.append(server)
    return server.start()


class Load:
    """Client threads opening a new connection per request until stopped; every outcome kept."""

    def __init__(self, port: int, threads: int = 4) -> None:
        self.port = port
        self.replies: list[tuple[float, int, int]] = []  # (time, pid, max_connections)
        self.errors: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pid, max_connections = ask_who(self.port)
            except Exception as exc:
                with self._lock:
                    self.errors.append((time.monotonic(), f"{type(exc).__name__}: {exc}"))
                continue
            with self._lock:
                self.replies.append((time.monotonic(), pid, max_connections))

    def wait_replies(self, count: int, where: object = None) -> None:
        """Wait for ``count`` more replies (from pid ``where`` if given)."""

        def mine() -> int:
            with self._lock:
                return sum(1 for _, pid, _ in self.replies if where is None or pid == where)

        target = mine() + count
        wait_for(f"{count} replies from {where or 'any worker'}", lambda: mine() >= target)


def test_two_workers_share_the_connections(servers: list[Server], tmp_path: Path) -> None:
    server = start(servers, tmp_path, "--workers", "2")
    port = server.wait_ready(2)
    workers = server.workers()
    assert len(workers) == 2
    counts = collections.Counter(ask_who(port)[0] for _ in range(200))
    assert set(counts) == set(workers)
    assert all(count > 0 for count in counts.values()), counts
    titles = {Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0") for pid in workers}
    assert titles == {b"trioserver: worker 1", b"trioserver: worker 2"}
    assert Path(f"/proc/{server.pid}/cmdline").read_bytes().rstrip(b"\0") == b"trioserver: master"
    server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    assert server.wait_exit() == 0


def test_a_killed_worker_is_respawned_while_the_other_serves(
    servers: list[Server], tmp_path: Path
) -> None:
    server = start(servers, tmp_path, "--workers", "2")
    port = server.wait_ready(2)
    victim, survivor = server.workers()
    with Load(port) as load:
        load.wait_replies(50)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        server.wait_log(r"was killed by SIGKILL \(perhaps out of memory")
        replacement = wait_for(
            "a new worker", lambda: [p for p in server.workers() if p not in (victim, survivor)]
        )[0]
        load.wait_replies(1, where=replacement)
        load.wait_replies(50, where=survivor)
    first_new = min(t for t, pid, _ in load.replies if pid == replacement)
    assert first_new - killed_at < 1.0
    survivor_times = [t for t, pid, _ in load.replies if pid == survivor]
    gaps = [b - a for a, b in itertools.pairwise(survivor_times)]
    assert max(gaps) < 1.0  # the survivor never stopped serving
    assert sorted(server.workers()) == sorted([survivor, replacement])
    # Connections open on the killed worker die with it; none is refused.
    assert not [e for _, e in load.errors if "refused" in e.lower()], load.errors


def test_reload_refuses_and_resets_nothing_and_runs_the_new_config(
    servers: list[Server], tmp_path: Path
) -> None:
    server = start(servers, tmp_path, "--workers", "2", config="[server]\nmax_connections = 1000\n")
    port = server.wait_ready(2)
    old = server.workers()
    with Load(port) as load:
        load.wait_replies(100)
        for round_, max_connections in enumerate((1001, 1002), start=1):
            server.config.write_text(f"[server]\nmax_connections = {max_connections}\n")
            os.kill(server.pid, signal.SIGHUP)
            server.wait_log(r"reload: 2 new workers ready", count=round_)
            server.wait_log(r"stopped: exited with code 0", count=2 * round_)
            load.wait_replies(100)
        new = server.workers()
        load.wait_replies(50, where=new[0])
        load.wait_replies(50, where=new[1])
    assert load.errors == []
    assert not set(new) & set(old)
    late = [(pid, mc) for t, pid, mc in load.replies[-40:]]
    assert {mc for _, mc in late} == {1002} and {pid for pid, _ in late} <= set(new)
    print(f"{len(load.replies)} requests over two reloads, no error")


def test_a_bad_config_on_reload_keeps_the_workers(servers: list[Server], tmp_path: Path) -> None:
    server = start(servers, tmp_path, "--workers", "1")
    port = server.wait_ready(1)
    before = server.workers()
    server.config.write_text("[server]\nmax_connections = -5\n")
    os.kill(server.pid, signal.SIGHUP)
    server.wait_log(r"reload: .*max_connections: -5 is outside .*; the workers keep running")
    assert server.workers() == before
    assert ask_who(port)[0] == before[0]


def test_a_reload_onto_an_app_that_is_not_a_factory_keeps_the_workers(
    servers: list[Server], tmp_path: Path
) -> None:
    """The application is checked before the reload starts a worker, as at start."""
    server = Server(
        tmp_path,
        ["--listen", "127.0.0.1:0", "--workers", "1"],
        config='[master]\napp = "sample_apps:who_router"\n',
    )
    servers.append(server.start())
    port = server.wait_ready(1)
    before = server.workers()
    server.config.write_text('[master]\napp = "sample_apps:returns_int"\n')
    os.kill(server.pid, signal.SIGHUP)
    server.wait_log(
        r"reload: application 'sample_apps:returns_int': returns_int\(\) is declared to "
        r"return int, not a Router.*; the workers keep running"
    )
    assert server.workers() == before
    assert ask_who(port)[0] == before[0]
    assert " started (pid " in server.text() and server.text().count(" started (pid ") == 1


@pytest.mark.parametrize(
    ("connections", "pipelined"),
    [
        (4, 25),
        (1, 100),  # more than server.inbox_size (64) waiting in one connection's buffer
    ],
)
def test_sigterm_answers_every_pipelined_request_then_closes(
    servers: list[Server], tmp_path: Path, connections: int, pipelined: int
) -> None:
    server = start(
        servers, tmp_path, "--workers", "2", config="[connection]\nflood_check = false\n"
    )
    port = server.wait_ready(2)
    workers = server.workers()
    conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(connections)]
    decoders = [FrameDecoder(0xFFFF) for _ in conns]

    def next_packet(i: int) -> Packet | None:
        while True:
            event = decoders[i].next_packet()
            if isinstance(event, Packet):
                return event
            data = conns[i].recv(65536)
            if not data:
                return None
            decoders[i].receive_data(data)

    try:
        for conn in conns:
            conn.sendall(encode(SLOW_WHO) * pipelined)
        for i in range(len(conns)):  # each connection is being served: its requests are read
            assert next_packet(i) is not None
        os.kill(server.pid, signal.SIGTERM)  # 100 requests in flight, 10 ms of work each
        for i in range(len(conns)):
            replies = [next_packet(i) for _ in range(pipelined - 1)]
            assert all(p is not None and p.code == SLOW_WHO for p in replies)
            assert next_packet(i) is None  # then EOF
    finally:
        for conn in conns:
            conn.close()
    assert server.wait_exit() == 0
    assert not [pid for pid in workers if process_alive(pid)]
    assert "master exiting with code 0" in server.text()


def test_a_worker_failing_to_boot_stops_the_server(servers: list[Server], tmp_path: Path) -> None:
    server = Server(
        tmp_path, ["--listen", "127.0.0.1:0", "--workers", "2", "--app", "sample_apps:exit_3"]
    )
    servers.append(server.start())
    assert server.wait_exit() == 3
    text = server.text()
    assert "failed to boot: it exited with code 3" in text
    assert "Stopping the server instead of starting another" in text
    assert text.count(" started (pid ") == 2  # no respawn loop
    assert not server.pidfile.exists()


def test_a_stuck_worker_is_killed_and_replaced(servers: list[Server], tmp_path: Path) -> None:
    server = start(servers, tmp_path, "--workers", "1", config="[master]\nliveness_timeout = 1.0\n")
    port = server.wait_ready(1)
    (stuck,) = server.workers()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(encode(BLOCK))
        server.wait_log(r"sent no heartbeat for 1\.\d s: its event loop is stuck")
    server.wait_log(rf"worker 1 \(pid {stuck}\) was killed by SIGKILL \(by the master")
    server.wait_log(r"worker 1 \(pid \d+\) ready", count=2)
    assert ask_who(port)[0] != stuck


def test_workers_exit_when_the_master_dies(servers: list[Server], tmp_path: Path) -> None:
    server = start(servers, tmp_path, "--workers", "2")
    server.wait_ready(2)
    workers = server.workers()
    os.kill(server.pid, signal.SIGKILL)
    wait_for("the orphaned workers to exit", lambda: not any(map(process_alive, workers)))


def run_cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trioserver", *args],
        env=env(),
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_daemon_start_status_stop(servers: list[Server], tmp_path: Path) -> None:
    admin = ["--set", 'metrics.listen="127.0.0.1:0"', "--set", "metrics.interval=0.1"]
    server = Server(tmp_path, [*BASE, "--workers", "2", "--daemon", *admin])
    servers.append(server)
    started = run_cli(tmp_path, *server.args[3:])  # returns once the daemon serves
    assert started.returncode == 0, started.stderr
    assert "daemon running" in started.stderr
    daemon = read_pid(server.pidfile)
    assert daemon is not None and process_alive(daemon)
    # A session of its own, but not its leader: it can never get a controlling terminal.
    assert os.getsid(daemon) not in (os.getsid(0), daemon)
    assert Path(f"/proc/{daemon}/cwd").resolve() == Path("/")
    assert {os.readlink(f"/proc/{daemon}/fd/{fd}") for fd in (0, 1)} == {"/dev/null"}
    assert os.readlink(f"/proc/{daemon}/fd/2") == str(server.log)  # logging.stderr_to_file
    port = server.wait_ready(2)
    assert ask_who(port)[0] in server.workers(daemon)

    status = run_cli(tmp_path, "status", "--pidfile", str(server.pidfile))
    assert status.returncode == 0, status.stderr
    assert f"master pid {daemon}" in status.stdout
    # The daemon's admin listener (port 0) is found beside its pidfile, with no --admin.
    assert re.search(r"figures from 127\.0\.0\.1:\d+ .*health: serving$", status.stdout)
    assert "WARNING" not in status.stdout
    rows = [line.split()[0] for line in status.stdout.splitlines()[2:]]
    assert rows[:3] == ["1", "2", "all"]

    second = run_cli(tmp_path, *server.args[3:])
    assert second.returncode == 1
    assert f"already running as pid {daemon}" in server.text()

    stopped = run_cli(tmp_path, "stop", "--pidfile", str(server.pidfile))
    assert stopped.returncode == 0, stopped.stderr
    assert not process_alive(daemon)
    assert not server.pidfile.exists()
    assert not server.pidfile.with_name(server.pidfile.name + ".admin").exists()
    gone = run_cli(tmp_path, "status", "--pidfile", str(server.pidfile))
    assert gone.returncode == 3 and "no server running" in gone.stderr


def start_daemon(servers: list[Server], tmp: Path, *args: str) -> tuple[Server, int, int]:
    """A daemon started through the command line: (server, daemon pid, port)."""
    server = Server(tmp, [*BASE, *args, "--daemon"])
    servers.append(server)
    started = run_cli(tmp, *server.args[3:])
    assert started.returncode == 0, started.stderr
    daemon = read_pid(server.pidfile)
    assert daemon is not None
    return server, daemon, server.wait_ready(2)


def test_a_daemon_respawns_a_killed_worker(servers: list[Server], tmp_path: Path) -> None:
    server, daemon, port = start_daemon(servers, tmp_path, "--workers", "2")
    victim, survivor = server.workers(daemon)
    os.kill(victim, signal.SIGKILL)
    server.wait_log(rf"pid {victim}\) was killed by SIGKILL")
    server.wait_log(r"worker \d \(pid \d+\) ready", count=3)
    assert process_alive(daemon)
    replacement = [p for p in server.workers(daemon) if p != survivor]
    assert len(replacement) == 1 and replacement[0] != victim
    assert "failed to boot" not in server.text()
    wait_for("the new worker to answer", lambda: ask_who(port)[0] == replacement[0])


def test_a_daemon_reloads(servers: list[Server], tmp_path: Path) -> None:
    server, daemon, port = start_daemon(servers, tmp_path, "--workers", "2")
    old = server.workers(daemon)
    reloaded = run_cli(tmp_path, "reload", "--pidfile", str(server.pidfile))
    assert reloaded.returncode == 0, reloaded.stderr
    server.wait_log(r"reload: 2 new workers ready")
    server.wait_log(r"stopped: exited with code 0", count=2)
    assert process_alive(daemon)
    new = server.workers(daemon)
    assert len(new) == 2 and not set(new) & set(old)
    assert ask_who(port)[0] in new


def test_a_daemon_workers_stderr_reaches_the_log(servers: list[Server], tmp_path: Path) -> None:
    server = Server(
        tmp_path,
        ["--listen", "127.0.0.1:0", "--workers", "1", "--app", "sample_apps:stderr_crash"],
    )
    servers.append(server)
    started = run_cli(tmp_path, *server.args[3:], "--daemon")
    assert started.returncode == 1
    text = server.wait_log(r"Fatal Python error: written to stderr by the worker")[0].string
    assert "failed to boot" in text
