"""Daemon mode: detach from the terminal the classic way, and say when the server is up.

::

    readiness = daemonize()   # returns in the daemon; the caller's process exits
    ...                       # start the workers
    readiness.ready()         # now the command that started us exits 0

Double fork with ``setsid`` in between (the daemon is no session leader, so it can
never reacquire a terminal), ``chdir("/")`` (no directory kept busy), a known
umask, and stdin, stdout *and* stderr on /dev/null (the original forgot stderr);
the caller then points stderr at the log file (:func:`trioserver.ops.logs.capture_stderr`)
so that what a process writes there before or beside logging is not lost.
The first process waits until the daemon reports READY or dies, so
``python -m trioserver --daemon`` exits 0 only once the server serves, 1 if it
failed (the log says why): what ``systemd`` ``Type=forking`` expects.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Final

__all__ = ["DAEMON_UMASK", "Readiness", "daemonize"]

#: Files the daemon creates (pidfile, log file) are writable by the owner only.
DAEMON_UMASK: Final = 0o022


class Readiness:
    """The daemon's end of the pipe to the waiting original process."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        """The pipe's fd while it is open, -1 after :meth:`ready` (workers close it)."""
        return self.fd

    def ready(self) -> None:
        """Tell the original process the server serves; it exits 0."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):  # the original process was killed: nobody waits
            os.write(self.fd, f"ready {os.getpid()}\n".encode())
        os.close(self.fd)
        self.fd = -1


def daemonize(workdir: str = "/", umask: int = DAEMON_UMASK) -> Readiness:
    """Detach; return only in the daemon. The calling process waits for READY, then exits."""
    read_fd, write_fd = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if os.fork() > 0:
        os.close(write_fd)
        _wait_for_daemon(read_fd)  # never returns
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir(workdir)
    os.umask(umask)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    return Readiness(write_fd)


def _wait_for_daemon(read_fd: int) -> None:
    chunks = []
    while chunk := os.read(read_fd, 1024):
        chunks.append(chunk)
    with contextlib.suppress(ChildProcessError):
        os.wait()  # the intermediate process
    words = b"".join(chunks).decode(errors="replace").split()
    if words[:1] == ["ready"]:
        print(f"trioserver: daemon running (pid {words[1]})", file=sys.stderr)
        code = 0
    else:
        print("trioserver: the daemon failed to start; its log says why", file=sys.stderr)
        code = 1
    sys.stderr.flush()
    os._exit(code)
