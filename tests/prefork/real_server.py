"""Run ``python -m trioserver`` as a real process tree for tests, and always clean it up.

Waiting is bounded polling (``wait_for``): the log file, the pidfile or a port is
looked at every few milliseconds until a deadline, never a bare sleep.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from sample_apps import WHO

from tests.polling import wait_for
from trioserver.client import BlockingClient
from trioserver.prefork.control import children
from trioserver.prefork.pidfile import process_alive, read_pid

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), out.get("PYTHONPATH", "")])
    return out


def ask_who(port: int, code: int = WHO, timeout: float = 5.0) -> tuple[int, int]:
    """One fresh connection, one request: (worker pid, its server.max_connections)."""
    with BlockingClient.connect("127.0.0.1", port, timeout=timeout) as client:
        reply = client.request(code)
    pid, max_connections = reply.body.split()
    return int(pid), int(max_connections)


class Server:
    """A master started with ``args`` in ``tmp``; logs to ``tmp/server.log``."""

    def __init__(self, tmp: Path, args: Sequence[str], *, config: str = "") -> None:
        self.tmp = tmp
        self.log = tmp / "server.log"
        self.pidfile = tmp / "server.pid"
        self.config = tmp / "server.toml"
        self.config.write_text(config)
        self.args = [
            sys.executable,
            "-m",
            "trioserver",
            "serve",
            "-c",
            str(self.config),
            "--set",
            f'logging.file="{self.log}"',
            "--pidfile",
            str(self.pidfile),
            *args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen_pids: set[int] = set()

    def start(self) -> Server:
        with open(self.tmp / "stderr.txt", "wb") as stderr:
            self.proc = subprocess.Popen(
                self.args,
                env=env(),
                cwd=self.tmp,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def text(self) -> str:
        try:
            return self.log.read_text()
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 10.0) -> list[re.Match[str]]:
        def found() -> list[re.Match[str]] | None:
            matches = list(re.finditer(pattern, self.text()))
            return matches if len(matches) >= count else None

        return wait_for(f"{count} x {pattern!r} in the log", found, timeout)

    def wait_ready(self, workers: int) -> int:
        """Wait until ``workers`` workers serve; the port the master listens on."""
        self.wait_log(rf"serving: {workers} workers ready")
        return int(self.wait_log(r"listening on 127\.0\.0\.1:(\d+)")[0].group(1))

    def workers(self, master: int | None = None) -> list[int]:
        pids = [p.pid for p in children(master or self.pid)]
        self.seen_pids.update(pids)
        return pids

    def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill_all(self) -> None:
        """Kill the master and every worker seen, by pid; reap the master."""
        masters = [self.pid] if self.proc is not None else []
        daemon = read_pid(self.pidfile)
        if daemon is not None:
            masters.append(daemon)
        for master in masters:
            if process_alive(master):
                self.workers(master)
                os.kill(master, signal.SIGKILL)
        for pid in self.seen_pids:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
