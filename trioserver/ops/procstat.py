"""A process's CPU time, resident memory and open files, read from ``/proc`` by its pid.

The master reads these for itself and for each worker when the admin page is
asked for them, as Prometheus client libraries do for their own process
(``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
``process_open_fds``). Reading from outside costs the workers nothing: no
timer, no report field, and a worker stuck in a loop still shows its CPU
climbing. The CPU a worker used up to its exit comes from ``wait4`` when the
master reaps it (:class:`~trioserver.prefork.procs.Exited`), so a slot's CPU
counter never goes backwards across respawns.

Linux only: elsewhere :func:`read_process` returns None and the page leaves
the series out.
"""

from __future__ import annotations

import os
from typing import Final

import attrs

__all__ = ["ProcessFigures", "parse_stat", "parse_statm", "read_process"]

_TICKS: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@attrs.frozen
class ProcessFigures:
    """One process at one instant."""

    cpu_seconds: float
    resident_bytes: int
    open_fds: int

    def to_json(self) -> dict[str, float | int]:
        return {
            "cpu_seconds": self.cpu_seconds,
            "resident_bytes": self.resident_bytes,
            "open_fds": self.open_fds,
        }


def parse_stat(text: str, ticks: int = _TICKS) -> float:
    """User plus system CPU seconds from ``/proc/<pid>/stat`` (fields 14 and 15)."""
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / ticks


def parse_statm(text: str, page: int = _PAGE) -> int:
    """Resident bytes from ``/proc/<pid>/statm`` (its second field, in pages)."""
    return int(text.split()[1]) * page


def read_process(pid: int, proc: str = "/proc") -> ProcessFigures | None:
    """``pid``'s figures; None if it is gone or there is no readable ``/proc``."""
    base = f"{proc}/{pid}"
    try:
        with open(f"{base}/stat", encoding="ascii", errors="replace") as f:
            cpu = parse_stat(f.read())
        with open(f"{base}/statm", encoding="ascii") as f:
            resident = parse_statm(f.read())
        fds = len(os.listdir(f"{base}/fd"))
    except (OSError, ValueError, IndexError):
        return None
    return ProcessFigures(cpu, resident, fds)
