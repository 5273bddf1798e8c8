"""The pidfile: the master's pid, written atomically, removed at exit, guarding a second start.

The file appears complete or not at all: the pid is written to a temporary file
in the same directory, which is then hard-linked to the final name. ``link``
fails if the name exists, so two servers starting at once cannot both win. A
pidfile whose process is gone (a crash, a reboot) is replaced with a warning.

Beside it, ``<pidfile>.admin`` tells ``status`` where the master's admin listener
is (``{"pid": 123, "admin": "127.0.0.1:9100"}``: the address it really bound,
so port 0 works too). The pidfile itself holds the pid alone, as service
managers and ``kill $(cat ...)`` expect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

__all__ = [
    "PidfileError",
    "admin_path",
    "check_free",
    "process_alive",
    "read_admin",
    "read_pid",
    "remove",
    "write",
    "write_admin",
]

log = logging.getLogger("trioserver.master")


class PidfileError(RuntimeError):
    """The pidfile names a live server, or cannot be used; the message says what to do."""


def read_pid(path: Path) -> int | None:
    """The pid in ``path``; None if there is no such file or it holds no pid."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is not running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def check_free(path: Path) -> None:
    """Raise :class:`PidfileError` if ``path`` names a running process other than us."""
    pid = read_pid(path)
    if pid is not None and pid != os.getpid() and process_alive(pid):
        raise PidfileError(
            f"{path}: a server is already running as pid {pid}; stop it first "
            f"(python -m trioserver stop --pidfile {path}) or use another master.pidfile"
        )


def write(path: Path) -> None:
    """Write our pid to ``path`` atomically; refuse if a live process holds it."""
    pid = os.getpid()
    tmp = path.with_name(f".{path.name}.{pid}.tmp")
    try:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{pid}\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            check_free(path)
            log.warning("%s: replacing a stale pidfile (pid %s is gone)", path, read_pid(path))
            os.replace(tmp, path)
    except OSError as exc:
        raise PidfileError(
            f"{path}: cannot write the pidfile: {exc.strerror} (set master.pidfile to a "
            'writable path, or to "" for none)'
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def admin_path(path: Path) -> Path:
    """The file beside pidfile ``path`` naming the master's admin listener."""
    return path.with_name(f"{path.name}.admin")


def write_admin(path: Path, address: str) -> None:
    """Record our admin listener's ``address`` beside pidfile ``path`` (atomically)."""
    target = admin_path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"pid": os.getpid(), "admin": address}) + "\n", "utf-8")
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_admin(path: Path) -> tuple[int, str] | None:
    """``(pid, "host:port")`` from beside pidfile ``path``; None if absent or unreadable."""
    try:
        data = json.loads(admin_path(path).read_text("utf-8"))
        pid, address = data["pid"], data["admin"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(pid, int) or not isinstance(address, str):
        return None
    return pid, address


def remove(path: Path) -> None:
    """Remove ``path`` (and its admin file) if it still holds our pid, never another's."""
    me = os.getpid()
    if (read_admin(path) or (None,))[0] == me:
        with contextlib.suppress(FileNotFoundError):
            admin_path(path).unlink()
    if read_pid(path) == me:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
