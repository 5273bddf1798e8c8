"""``python -m trioserver stop|reload|reopen|status``: act on a running server through its pidfile.

Workers are found as the master's children in ``/proc`` (Linux), named by the
process titles they set (``trioserver: worker N``); their ages come from the
kernel's start times. Their figures (connections, packets, drops, kicks...)
come from the master's admin listener (``/status.json``), the same source as the
Prometheus page. ``status`` finds it in the ``.admin`` file the running master
wrote beside its pidfile (so it needs no option, and works with port 0), else
in ``metrics.listen`` of the config; without one it lists the processes only.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import attrs

from ..config import Address, parse_address
from ..ops.metrics import format_bytes, format_seconds
from .pidfile import process_alive, read_admin, read_pid

__all__ = [
    "ControlError",
    "ProcessInfo",
    "admin_of",
    "children",
    "find_master",
    "format_age",
    "status",
    "stop",
]

#: How often ``stop`` looks whether the master is gone.
_POLL: float = 0.05


class ControlError(RuntimeError):
    """No server to act on; the message says what was looked at."""


@attrs.frozen
class ProcessInfo:
    pid: int
    title: str
    age: float | None


def find_master(pidfile: Path) -> int:
    """The live master's pid from ``pidfile``, or :class:`ControlError`."""
    pid = read_pid(pidfile)
    if pid is None:
        raise ControlError(f"no server running: {pidfile} does not exist or holds no pid")
    if not process_alive(pid):
        raise ControlError(f"no server running: {pidfile} names pid {pid}, which is gone")
    return pid


def admin_of(pidfile: Path, pid: int) -> Address | None:
    """The admin listener master ``pid`` recorded beside ``pidfile``, if it did."""
    found = read_admin(pidfile)
    if found is None or found[0] != pid:
        return None  # none, or a stale file of an earlier server
    try:
        return parse_address(found[1])
    except ValueError:
        return None


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def _age(fields: list[str]) -> float | None:
    try:
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started)


def process_info(pid: int) -> ProcessInfo:
    fields = _stat_fields(pid)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = b" ".join(f.read().split(b"\0")).decode(errors="replace").strip()
    except OSError:
        title = "?"
    return ProcessInfo(pid, title, _age(fields) if fields else None)


def children(pid: int) -> list[ProcessInfo]:
    """``pid``'s child processes, oldest first (empty where there is no /proc)."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields and len(fields) > 1 and fields[1] == str(pid) and fields[0] != "Z":
            found.append(process_info(int(entry)))
    return sorted(found, key=lambda p: -(p.age or 0.0))


def fetch_status(admin: Address, timeout: float = 3.0) -> dict[str, Any]:
    """The master's ``/status.json`` (OSError or ValueError if it cannot be had)."""
    host = f"[{admin.host}]" if ":" in admin.host else admin.host
    if host in ("0.0.0.0", "[::]"):
        host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
    url = f"http://{host}:{admin.port}/status.json"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data = json.loads(response.read())
    if not isinstance(data, dict) or not isinstance(data.get("workers"), list):
        raise ValueError(f"{url} did not answer a status object")
    return data


#: The per-worker table: (heading, how to show one worker's figures).
_COLUMNS: list[tuple[str, str]] = [
    ("open", "connections_open"),
    ("resting", "connections_resting"),
    ("accepted", "connections_accepted"),
    ("refused", "connections_refused"),
    ("packets", "packets"),
    ("drops", "drops"),
    ("kicks", "kicks"),
    ("queue", "queue_depth"),
    ("outbox", "outbox_bytes"),
    ("lag", "loop_lag_recent_max"),
    ("http", "http_requests"),
    ("cpu", "cpu_seconds"),
    ("rss", "resident_bytes"),
]


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"  # not measured (no /proc)
    if key == "cpu_seconds":
        return f"{float(value):.1f} s"
    if key in ("outbox_bytes", "resident_bytes"):
        return format_bytes(float(value))
    if key == "loop_lag_recent_max":
        return format_seconds(float(value))
    return str(value)


def format_table(data: dict[str, Any], ages: dict[int, float | None]) -> list[str]:
    """Per-worker figures as aligned rows, then a row of totals."""
    rows = [["worker", "pid", "up", *(h for h, _ in _COLUMNS)]]
    totals: dict[str, float] = {key: 0 for _, key in _COLUMNS}
    for worker in data["workers"]:
        pids = worker.get("pids") or []
        pid_text = ",".join(str(p) for p in pids) or "-"
        age = format_age(ages.get(pids[-1])) if pids else "-"
        row = [str(worker["worker"]), pid_text, age]
        for _, key in _COLUMNS:
            value = worker.get(key, 0)
            row.append(_cell(key, value))
            if value is None:
                continue
            if key == "loop_lag_recent_max":
                totals[key] = max(totals[key], float(value))
            else:
                totals[key] += value
        rows.append(row)
    rows.append(["all", "", "", *(_cell(key, totals[key]) for _, key in _COLUMNS)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]


def status(
    pidfile: Path, admin: Address | None = None, *, configured: Address | None = None
) -> str:
    """The master, and each worker with its pid, age and figures.

    The figures come from ``admin`` if given, else from the admin listener the
    running master recorded beside its pidfile, else from ``configured``.
    """
    pid = find_master(pidfile)
    if admin is None:
        admin = admin_of(pidfile, pid) or configured
    master = process_info(pid)
    workers = children(pid)
    lines = [f"trioserver master pid {pid}, up {format_age(master.age)} ({pidfile})"]
    data: dict[str, Any] | None = None
    if admin is None:
        note = "figures: none (set metrics.listen to have the master serve them)"
    else:
        try:
            data = fetch_status(admin)
        except (OSError, ValueError) as exc:
            note = f"figures: the admin listener on {admin} did not answer: {exc}"
        else:
            note = f"figures from {admin} (each worker's last report), health: {data.get('health')}"
            if data.get("master_pid") != pid:
                note += f"; WARNING: that is the server of master pid {data.get('master_pid')}"
    if data is not None:
        lines.extend(format_table(data, {c.pid: c.age for c in workers}))
    else:
        if not workers and not os.path.isdir("/proc"):
            lines.append("  workers: unknown (no /proc on this system)")
        for child in workers:
            name = child.title.removeprefix("trioserver: ") if child.title else "?"
            lines.append(f"  {name:<22} pid {child.pid:<8} up {format_age(child.age)}")
    lines.append(note)
    return "\n".join(lines)


def send(pidfile: Path, signum: int) -> int:
    """Send ``signum`` to the master named by ``pidfile``; its pid."""
    pid = find_master(pidfile)
    os.kill(pid, signum)
    return pid


def stop(pidfile: Path, *, fast: bool = False, timeout: float = 60.0) -> int:
    """Stop the server (SIGTERM, or SIGQUIT if ``fast``) and wait until it is gone; its pid."""
    pid = send(pidfile, signal.SIGQUIT if fast else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            raise ControlError(f"pid {pid} is still running {timeout:g} s after the stop signal")
        time.sleep(_POLL)
    return pid
