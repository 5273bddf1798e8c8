"""A real ``python -m trioserver serve`` for the tests that drive it from outside
(browsers, balancers): started in its own session, ready when its log says so, killed
with its workers afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from .polling import wait_for

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server(tmp_path: Path, args: Sequence[str], *, workers: int) -> Iterator[Path]:
    """``serve --workers N ARGS`` logging to ``tmp_path/server.log``; yields the log."""
    log = tmp_path / "server.log"
    command = [
        sys.executable, "-m", "trioserver", "serve", "--workers", str(workers), *args,
        "--pidfile", str(tmp_path / "server.pid"), "--set", f'logging.file="{log}"',
    ]  # fmt: skip
    proc = subprocess.Popen(
        command,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        ready = f"serving: {workers} workers ready"
        wait_for(ready, lambda: log.exists() and ready in log.read_text(), timeout=30)
        yield log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the master and its workers
        proc.wait(10)
