"""What one worker's hand over did with its connections, as data.

The old worker returns it from ``Worker.hand_over``, sends it to the master on its
pipe (``to_json``), and the master adds up a reload's (``plus``) for its log and
metrics. Pure: no sockets, no clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["HandoffCounts"]


def _counts(value: Mapping[str, int]) -> dict[str, int]:
    return dict(value)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@attrs.frozen
class HandoffCounts:
    """What one hand over did (or a reload's, added up)."""

    #: Connections the new worker acknowledged: it serves them now.
    moved: int = 0
    #: Connections that stayed to drain as on a plain stop, by reason (``tls``, ``http``,
    #: ``too_big``...: :class:`trioserver.reasons.HandoffKept`).
    kept: Mapping[str, int] = attrs.field(factory=dict, converter=_counts)
    #: Connections that were to move but drained in the old worker because the channel
    #: ended or broke (the new worker gone, say) or the hand over was cut short.
    failed: int = 0
    #: From the start of the hand over until every connection was moved or draining.
    seconds: float = 0.0

    @property
    def kept_total(self) -> int:
        return sum(self.kept.values())

    @property
    def total(self) -> int:
        return self.moved + self.kept_total + self.failed

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "moved": self.moved,
                "kept": dict(self.kept),
                "failed": self.failed,
                "seconds": self.seconds,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> HandoffCounts:
        """The counts in ``payload``; ValueError if it is not one."""
        data: Any = json.loads(payload)
        if not isinstance(data, dict):
            raise ValueError(f"handoff counts are an object, not {type(data).__name__}")
        kept = data.get("kept", {})
        if not isinstance(kept, dict) or not all(
            isinstance(k, str) and _count(v) for k, v in kept.items()
        ):
            raise ValueError(f"kept must map reasons to counts, not {kept!r}")
        moved, failed, seconds = data.get("moved", 0), data.get("failed", 0), data.get("seconds")
        if not (_count(moved) and _count(failed)):
            raise ValueError(f"moved and failed must be counts, not {moved!r}, {failed!r}")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
            raise ValueError(f"seconds must be a duration, not {seconds!r}")
        return cls(moved, kept, failed, float(seconds))

    def plus(self, other: HandoffCounts) -> HandoffCounts:
        """Both added up; the longer of the two durations (the workers hand over at once)."""
        kept = dict(self.kept)
        for reason, count in other.kept.items():
            kept[reason] = kept.get(reason, 0) + count
        return HandoffCounts(
            self.moved + other.moved,
            kept,
            self.failed + other.failed,
            max(self.seconds, other.seconds),
        )

    def describe(self) -> str:
        """``480 moved, 20 drained (tls 12, http 8), 0 failed``."""
        parts = [f"{k} {v}" for k, v in sorted(self.kept.items(), key=lambda kv: -kv[1]) if v]
        detail = f" ({', '.join(parts)})" if parts else ""
        return f"{self.moved} moved, {self.kept_total} drained{detail}, {self.failed} failed"
