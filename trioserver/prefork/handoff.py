"""The master's side of handing live connections over on a reload: who hands to whom, what
the old worker reports, and the reload's totals. Pure: no sockets, no clock.

On a reload with ``master.handoff`` on, once every new worker serves, the master makes
one handoff channel (a ``SOCK_SEQPACKET`` socketpair, :mod:`trioserver.handoff_channel`)
per old worker and sends its ends over the workers' control sockets: ``ADOPT`` to the new
worker of the same slot (:func:`handoff_targets`), which serves whatever arrives on it,
and ``HAND_OVER`` to the old one, which moves its movable connections over it, drains the
rest, reports a :class:`HandoffResult` on its pipe and exits. One channel per old worker,
not one per new worker: the new worker acks each connection on the channel it came by,
and an ack must reach the old worker that sent it. The master keeps no copy, so a
channel ends as soon as either of its two workers closes it or dies.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

__all__ = ["ADOPT", "HAND_OVER", "HandoffResult", "HandoffRun", "handoff_targets"]

#: The master's commands on a worker's control socket, each with a channel's fd beside it:
#: serve the connections that arrive on it / move your connections over it, then retire.
ADOPT: Final = b"adopt"
HAND_OVER: Final = b"hand over"


def _counts(value: Mapping[str, int]) -> dict[str, int]:
    return dict(value)


def handoff_targets(
    old: Iterable[tuple[int, int]], new: Mapping[int, int]
) -> list[tuple[int, int]]:
    """(old pid, new pid) for each old ``(index, pid)``: the new worker of the same slot.

    Slots are 1-based. With fewer new workers, old slot ``i`` hands to new slot
    ``(i - 1) % len(new) + 1``, the slot that now serves old slot ``i``'s listening
    sockets (:class:`~trioserver.prefork.procs.ListeningSockets`); with more, the extra
    new workers adopt nothing and take new connections only.
    """
    count = len(new)
    if count == 0:
        return []
    return [(pid, new[(index - 1) % count + 1]) for index, pid in sorted(old)]


@attrs.frozen
class HandoffResult:
    """What one old worker did with its connections (the ``HANDED_OVER`` pipe record)."""

    #: Connections now served by the new worker.
    moved: int = 0
    #: Connections that could not move and were drained as on a plain retire, by why
    #: (``tls``, ``http``, ``too_big``...).
    drained: Mapping[str, int] = attrs.field(factory=dict, converter=_counts)
    #: Connections whose move failed (the new worker gone, say) and that were drained.
    failed: int = 0
    #: Seconds from the command until every connection was moved or draining.
    seconds: float = 0.0

    @property
    def drained_total(self) -> int:
        return sum(self.drained.values())

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "moved": self.moved,
                "drained": dict(self.drained),
                "failed": self.failed,
                "seconds": self.seconds,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> HandoffResult:
        """The result in ``payload``; ValueError if it is not one."""
        data: Any = json.loads(payload)
        if not isinstance(data, dict):
            raise ValueError(f"a handoff result is an object, not {type(data).__name__}")
        drained = data.get("drained", {})
        if not isinstance(drained, dict) or not all(
            isinstance(k, str) and _count(v) for k, v in drained.items()
        ):
            raise ValueError(f"drained must map reasons to counts, not {drained!r}")
        moved, failed, seconds = data.get("moved", 0), data.get("failed", 0), data.get("seconds")
        if not (_count(moved) and _count(failed)):
            raise ValueError(f"moved and failed must be counts, not {moved!r}, {failed!r}")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
            raise ValueError(f"seconds must be a duration, not {seconds!r}")
        return cls(moved, drained, failed, float(seconds))

    def plus(self, other: HandoffResult) -> HandoffResult:
        drained = dict(self.drained)
        for reason, count in other.drained.items():
            drained[reason] = drained.get(reason, 0) + count
        return HandoffResult(
            self.moved + other.moved,
            drained,
            self.failed + other.failed,
            max(self.seconds, other.seconds),
        )

    def describe(self) -> str:
        """``480 moved, 20 drained (tls 12, http 8), 0 failed``."""
        parts = [f"{k} {v}" for k, v in sorted(self.drained.items(), key=lambda kv: -kv[1]) if v]
        detail = f" ({', '.join(parts)})" if parts else ""
        return f"{self.moved} moved, {self.drained_total} drained{detail}, {self.failed} failed"


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@attrs.define(eq=False)
class HandoffRun:
    """One reload's handoff as the master follows it: the old workers it still waits for."""

    generation: int
    #: When the master sent the first command (its monotonic clock).
    started: float
    #: Old worker pids that have neither reported nor exited.
    pending: set[int]
    total: HandoffResult = HandoffResult()
    #: Old workers that exited without a report (killed, crashed): their connections
    #: went with them, as on any worker's death.
    unreported: int = 0

    def reported(self, pid: int, result: HandoffResult) -> None:
        if pid in self.pending:
            self.pending.discard(pid)
            self.total = self.total.plus(result)

    def gone(self, pid: int) -> None:
        if pid in self.pending:
            self.pending.discard(pid)
            self.unreported += 1

    @property
    def done(self) -> bool:
        return not self.pending
