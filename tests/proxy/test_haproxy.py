"""A real HAProxy on loopback in front of two trioserver instances on one PostgreSQL.

HAProxy (TCP mode, ``send-proxy-v2``, a binary-ping ``tcp-check``) has one frontend
per instance, so a test can pick the instance, and one balanced over both. Clients
register on one instance and log in on the other; each instance logs the client's
real address (its port is the client's own, which no instance sees on its sockets);
one instance is stopped gracefully under load with no failed request; and a dead
instance that HAProxy still believes up is covered by ``retries`` + ``redispatch``.

Everything listens on and talks to 127.0.0.1 only. Every process is started in its
own session and killed by pid at the end, even on failure. Without haproxy the test
skips, unless ``CI`` is set: then it fails.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from trioserver.client import BlockingClient
from trioserver.framer import PING
from trioserver.messages import ResultCode
from trioserver.prefork.control import children
from trioserver.prefork.pidfile import process_alive

from ..accounts.pgserver import PostgresServer, free_port
from ..polling import wait_for
from .proxy_app import WHO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def fresh_database(server: PostgresServer) -> str:
    import psycopg

    name = f"proxy_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.url_for(name)


class Instance:
    """One ``python -m trioserver serve`` (a master and its workers) requiring PROXY v2."""

    def __init__(self, name: str, tmp: Path, store_url: str) -> None:
        self.name = name
        self.log = tmp / f"{name}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), env.get("PYTHONPATH", "")])
        settings = {
            "logging.file": f'"{self.log}"',
            "http.listen": "[]",
            "server.proxy_protocol": '"v2"',
            "accounts.url": f'"{store_url}"',
            "accounts.scrypt_n": "1024",
            # Every client is 127.0.0.1, and the load's six threads log in as "alice" at
            # once: a login in progress holds a token of its name until it succeeds, so
            # the per-name limit (5) would refuse the sixth now and then.
            "accounts.max_failures_per_address": "0",
            "accounts.max_failures_per_name": "0",
            "accounts.max_registrations_per_address": "0",
            # Up to six of those logins may reach one worker at once: more than its
            # default line of hashes (half its handler tasks less its hash thread), which
            # would answer 'busy'; this test is about the drain, not hash capacity.
            "accounts.hash_queue": "8",
            "connection.flood_check": "false",
        }
        args = [sys.executable, "-m", "trioserver", "serve", "--workers", "2"]
        args += ["--listen", "127.0.0.1:0", "--app", "proxy_app:router"]
        args += ["--pidfile", str(tmp / f"{name}.pid")]
        for key, value in settings.items():
            args += ["--set", f"{key}={value}"]
        with open(tmp / f"{name}.stderr", "wb") as stderr:
            self.proc = subprocess.Popen(
                args, env=env, cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr, start_new_session=True,
            )  # fmt: skip
        self.workers: set[int] = set()
        self.port = 0

    def text(self) -> str:
        try:
            return self.log.read_text()
        except FileNotFoundError:
            return ""

    def wait_ready(self) -> None:
        wait_for(f"{self.name} to serve", lambda: "serving: 2 workers ready" in self.text(), 30)
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.text())
        assert found is not None
        self.port = int(found.group(1))
        self.workers.update(p.pid for p in children(self.proc.pid))

    def kill_all(self) -> None:
        """SIGKILL the master and every worker seen, by pid; reap the master."""
        if self.proc.poll() is None:
            self.workers.update(p.pid for p in children(self.proc.pid))
            os.kill(self.proc.pid, signal.SIGKILL)
        for pid in self.workers:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)


CHECK = """\
    option tcp-check
    tcp-check send-binary {ping}
    tcp-check expect binary {ping}
"""


def haproxy_config(sock: Path, ports: dict[str, int], a: int, b: int) -> str:
    ping = PING.hex()
    check = CHECK.format(ping=ping)
    return f"""\
global
    maxconn 1000
    stats socket {sock} mode 600 level admin

defaults
    mode tcp
    timeout connect 500ms
    timeout client 30s
    timeout server 30s
    timeout check 500ms
    retries 3
    option redispatch 1
    default-server send-proxy-v2 check inter 200ms fall 2 rise 1

frontend fe_a
    bind 127.0.0.1:{ports["a"]}
    default_backend be_a

frontend fe_b
    bind 127.0.0.1:{ports["b"]}
    default_backend be_b

frontend fe_pool
    bind 127.0.0.1:{ports["pool"]}
    default_backend be_pool

backend be_a
{check}    server a 127.0.0.1:{a}

backend be_b
{check}    server b 127.0.0.1:{b}

backend be_pool
    balance roundrobin
{check}    server a 127.0.0.1:{a}
    server b 127.0.0.1:{b}
"""


def find_haproxy() -> str:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)),
        None,
    )
    if found is None:
        message = "haproxy not found (apt-get install -y haproxy; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {message}")
        pytest.skip(message)
    return found


class HAProxy:
    """HAProxy in the foreground, with its admin socket for ``show stat`` and commands."""

    def __init__(self, binary: str, tmp: Path, a: int, b: int) -> None:
        self.sock = tmp / "haproxy.sock"
        self.ports = {"a": free_port(), "b": free_port(), "pool": free_port()}
        config = tmp / "haproxy.cfg"
        config.write_text(haproxy_config(self.sock, self.ports, a, b))
        self.stderr = tmp / "haproxy.stderr"
        with open(self.stderr, "wb") as stderr:
            self.proc = subprocess.Popen(
                [binary, "-db", "-f", str(config)],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, start_new_session=True,
            )  # fmt: skip

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(5)
            conn.connect(str(self.sock))
            conn.sendall(line.encode() + b"\n")
            out = b""
            while chunk := conn.recv(65536):
                out += chunk
        return out.decode()

    def stat(self, backend: str, server: str) -> dict[str, str]:
        text = self.command("show stat").lstrip("# ")
        for row in csv.DictReader(io.StringIO(text)):
            if row["pxname"] == backend and row["svname"] == server:
                return row
        raise AssertionError(f"no {backend}/{server} in show stat:\n{text}")

    def wait_up(self, timeout: float = 20.0) -> None:
        def all_up() -> bool:
            if self.proc.poll() is not None:
                fail_or_skip(f"haproxy exited: {self.stderr.read_text()[-2000:]}")
            try:
                rows = [self.stat(f"be_{s}", s) for s in "ab"]
                rows += [self.stat("be_pool", s) for s in "ab"]
            except OSError:
                return False  # the admin socket is not there yet
            return all(row["status"] == "UP" for row in rows)

        wait_for("HAProxy to see both instances up", all_up, timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def fail_or_skip(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {message}")
    pytest.skip(message)


@pytest.fixture
def cluster(
    tmp_path: Path, postgres_server: PostgresServer
) -> Iterator[tuple[HAProxy, Instance, Instance]]:
    binary = find_haproxy()
    url = fresh_database(postgres_server)
    started: list[Instance] = []
    haproxy: HAProxy | None = None
    try:
        for name in ("a", "b"):
            started.append(Instance(name, tmp_path, url))
        for instance in started:
            instance.wait_ready()
        a, b = started
        haproxy = HAProxy(binary, tmp_path, a.port, b.port)
        haproxy.wait_up()
        yield haproxy, a, b
    finally:
        if haproxy is not None:
            haproxy.kill()
        for instance in started:
            instance.kill_all()


def who(port: int) -> tuple[int, str, int]:
    """One WHO through HAProxy ``port``: (instance pid, the peer it saw, our own port)."""
    with BlockingClient.connect("127.0.0.1", port, timeout=5) as client:
        mine = client.sock.getsockname()[1]
        pid, peer = client.request(WHO).body.decode().split()
    return int(pid), peer, mine


class Load:
    """Client threads, a new connection through HAProxy per request, each outcome kept.

    A request is WHO, every third one a login: it fails if it gets no correct reply
    within 5 s (a reset, an early close, a wrong answer, a timeout).
    """

    def __init__(self, port: int, threads: int = 6) -> None:
        self.port = port
        self.outcomes: list[tuple[float, int | str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            start = time.monotonic()
            try:
                with BlockingClient.connect("127.0.0.1", self.port, timeout=5) as client:
                    if n % 3 == 0:
                        reply = client.login("alice", "secret")
                        assert reply.result == ResultCode.OK, reply
                    pid = int(client.request(WHO).body.split()[0])
                self.outcomes.append((start, pid))
            except Exception as exc:
                self.outcomes.append((start, f"{type(exc).__name__}: {exc}"))
            time.sleep(0.005)

    def failures(self) -> list[tuple[float, int | str]]:
        return [o for o in self.outcomes if isinstance(o[1], str)]

    def served(self, since: float = 0.0) -> Counter[int | str]:
        return Counter(who for at, who in self.outcomes if at >= since)


def test_two_instances_behind_haproxy(cluster: tuple[HAProxy, Instance, Instance]) -> None:
    haproxy, a, b = cluster
    fe = haproxy.ports

    # Each frontend reaches its own instance, which sees the client's own address.
    for name, instance in (("a", a), ("b", b)):
        pid, peer, mine = who(fe[name])
        assert pid == instance.proc.pid
        assert peer == f"127.0.0.1:{mine}"

    # Register on one instance, log in on the other: one PostgreSQL behind both.
    with BlockingClient.connect("127.0.0.1", fe["a"], timeout=10) as client:
        assert client.register("alice", "secret").result == ResultCode.OK
    with BlockingClient.connect("127.0.0.1", fe["b"], timeout=10) as client:
        reply = client.login("alice", "secret")
        assert (reply.result, reply.username) == (ResultCode.OK, b"alice")
    with BlockingClient.connect("127.0.0.1", fe["a"], timeout=10) as client:
        assert client.register("alice", "other").result == ResultCode.REJECTED

    # The logs name the real client: a failed login logs the address it came from.
    for name, instance in (("a", a), ("b", b)):
        with BlockingClient.connect("127.0.0.1", fe[name], timeout=10) as client:
            mine = client.sock.getsockname()[1]
            assert client.login("mallory", "guess").result == ResultCode.REJECTED
        line = f"login 'mallory' from 127.0.0.1:{mine}: wrong name or password"
        wait_for(f"{line!r} in {name}'s log", lambda i=instance, t=line: t in i.text(), 5)
    # Health checks carry a PROXY header too (LOCAL): nothing was refused.
    assert "refused" not in a.text() + b.text()

    # Stop instance a gracefully under load: HAProxy drains it, then SIGTERM.
    with Load(fe["pool"]) as load:
        wait_for("load on both instances", lambda: len(load.served()) >= 2, 10)
        haproxy.command("set server be_pool/a state drain")
        haproxy.command("set server be_a/a state drain")
        wait_for(
            "a's sessions to end",
            lambda: haproxy.stat("be_pool", "a")["scur"] == "0",
            10,
        )
        os.kill(a.proc.pid, signal.SIGTERM)
        assert a.proc.wait(15) == 0
        stopped = time.monotonic()
        wait_for(
            "HAProxy's health check to mark a down",
            lambda: haproxy.stat("be_pool", "a")["status"].startswith("DOWN"),
            5,
        )
        wait_for(
            "more requests after the stop", lambda: sum(load.served(stopped).values()) >= 30, 10
        )
    assert load.failures() == []
    assert set(load.served()) == {a.proc.pid, b.proc.pid}
    assert set(load.served(stopped)) == {b.proc.pid}
    assert "master exiting with code 0" in a.text()

    # A dead instance HAProxy still believes up: retries + redispatch hide it.
    haproxy.command("disable health be_pool/a")
    haproxy.command("set server be_pool/a state ready")
    haproxy.command("set server be_pool/a health up")
    assert haproxy.stat("be_pool", "a")["status"] in ("UP", "no check")  # in rotation again
    pids = [who(fe["pool"])[0] for _ in range(10)]
    assert pids == [b.proc.pid] * 10
    row = haproxy.stat("be_pool", "a")
    assert int(row["wredis"]) >= 1, row
