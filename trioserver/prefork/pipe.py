"""The worker → master pipe: tagged records, a sans-I/O decoder, and the worker's writer.

Each record starts with one tag byte::

    b"R"                        READY: the worker serves (once)
    b"H"                        HEARTBEAT: its event loop is alive (periodic)
    b"S" + u32 length + JSON    a statistics report (``WorkerStatistics.to_json``)
    b"O" + u32 length + JSON    a retiring worker handed its connections over (once;
                                ``HandoffCounts.to_json`` in :mod:`trioserver.handoff_counts`)

READY and HEARTBEAT are the single bytes the pipe always carried, so they stay
one-byte records; a report is length-prefixed because it is larger than a pipe
write is guaranteed atomic for (PIPE_BUF, 4 KiB), and a non-blocking write may
send only part of it. One pipe rather than a second one for reports: the
master's poll loop, the child's fd hygiene and the reap path stay as they were,
and a report is as good a sign of life as a heartbeat.

The decoder never blocks and never grows without bound: a report longer than
``MAX_REPORT`` or an unknown tag is a :class:`PipeProtocolError` (a bug in the
worker); the master then ignores that pipe's reports from then on.
"""

from __future__ import annotations

import os
import struct
from typing import Final

import attrs

__all__ = [
    "HANDED_OVER",
    "HEARTBEAT",
    "MAX_REPORT",
    "READY",
    "REPORT",
    "Decoded",
    "MasterPipe",
    "PipeDecoder",
    "PipeProtocolError",
    "encode_handed_over",
    "encode_report",
]

READY: Final = b"R"
HEARTBEAT: Final = b"H"
REPORT: Final = b"S"
HANDED_OVER: Final = b"O"
#: Largest report payload accepted; a worker's snapshot is a few KiB.
MAX_REPORT: Final = 4 * 1024 * 1024
#: Most bytes a worker keeps waiting for a master that does not read.
MAX_PENDING: Final = 8 * 1024 * 1024

_LENGTH = struct.Struct(">I")


class PipeProtocolError(ValueError):
    """The worker wrote something that is not a record (a bug on the worker's side)."""


def encode_report(payload: bytes) -> bytes:
    """One statistics record for ``payload`` (JSON bytes)."""
    if len(payload) > MAX_REPORT:
        raise ValueError(f"report of {len(payload)} bytes exceeds MAX_REPORT ({MAX_REPORT})")
    return REPORT + _LENGTH.pack(len(payload)) + payload


def encode_handed_over(payload: bytes) -> bytes:
    """The record a retiring worker sends once it has handed its connections over."""
    if len(payload) > MAX_REPORT:
        raise ValueError(f"report of {len(payload)} bytes exceeds MAX_REPORT ({MAX_REPORT})")
    return HANDED_OVER + _LENGTH.pack(len(payload)) + payload


@attrs.frozen
class Decoded:
    """What one chunk of pipe bytes held: control bytes in order, and whole reports."""

    control: bytes
    reports: tuple[bytes, ...]
    #: Handoff results (``HANDED_OVER`` payloads), in order.
    handoffs: tuple[bytes, ...] = ()


class PipeDecoder:
    """Bytes from one worker's pipe → records; keeps a partial report until it completes."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Decoded:
        buf = self._buffer
        buf += data
        control = bytearray()
        reports: list[bytes] = []
        handoffs: list[bytes] = []
        pos = 0
        end = len(buf)
        while pos < end:
            tag = buf[pos]
            if tag in (READY[0], HEARTBEAT[0]):
                control.append(tag)
                pos += 1
                continue
            if tag not in (REPORT[0], HANDED_OVER[0]):
                del buf[:]
                raise PipeProtocolError(f"unknown record tag {bytes([tag])!r} on a worker pipe")
            if end - pos < 1 + _LENGTH.size:
                break
            (length,) = _LENGTH.unpack_from(buf, pos + 1)
            if length > MAX_REPORT:
                del buf[:]
                raise PipeProtocolError(f"report of {length} bytes exceeds {MAX_REPORT}")
            start = pos + 1 + _LENGTH.size
            if end - start < length:
                break
            (reports if tag == REPORT[0] else handoffs).append(bytes(buf[start : start + length]))
            pos = start + length
        del buf[:pos]
        return Decoded(bytes(control), tuple(reports), tuple(handoffs))

    @property
    def pending(self) -> int:
        """Bytes of an incomplete record held back."""
        return len(self._buffer)


class MasterPipe:
    """The worker's write end: never blocks; a record is written whole or kept for later.

    A report that cannot start because earlier bytes still wait is dropped (the
    next one supersedes it); READY, HEARTBEAT and the handoff result are always kept. ``send``
    returns False once the master is gone (EPIPE, or we were re-parented).
    """

    def __init__(self, fd: int, master_pid: int) -> None:
        self._fd = fd
        self._master_pid = master_pid
        self._pending = bytearray()
        self.dropped_reports = 0
        os.set_blocking(fd, False)

    def send(self, record: bytes) -> bool:
        if os.getppid() != self._master_pid:
            return False
        if not self._flush():
            return False
        if self._pending:
            if record[:1] == REPORT:
                self.dropped_reports += 1
                return True
            if len(self._pending) + len(record) > MAX_PENDING:
                return True  # the master reads nothing; its liveness check will act
        self._pending += record
        return self._flush()

    @property
    def waiting(self) -> int:
        """Bytes written to this object but not yet to the pipe."""
        return len(self._pending)

    def flush(self) -> bool:
        """Write what waits, as far as the pipe takes it; False once the master is gone."""
        return self._flush()

    def _flush(self) -> bool:
        while self._pending:
            try:
                written = os.write(self._fd, self._pending)
            except BlockingIOError:
                return True  # the master is busy; the rest goes with the next send
            except OSError:
                return False
            del self._pending[:written]
        return True
