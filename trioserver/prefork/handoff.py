"""The master's side of handing live connections over on a reload: who hands to whom, what
the old worker reports, and the reload's totals. Pure: no sockets, no clock.

On a reload with ``master.handoff`` on, once every new worker serves, the master makes
one handoff channel (a ``SOCK_SEQPACKET`` socketpair, :mod:`trioserver.handoff_channel`)
per old worker and sends its ends over the workers' control sockets: ``ADOPT`` to the new
worker of the same slot (:func:`handoff_targets`), which serves whatever arrives on it,
and ``HAND_OVER`` to the old one, which moves its movable connections over it, drains the
rest, reports its :class:`~trioserver.handoff_counts.HandoffCounts` on its pipe and exits.
One channel per old worker, not one per new worker: the new worker acks each connection
on the channel it came by, and an ack must reach the old worker that sent it. The master
keeps no copy, so a channel ends as soon as either of its two workers closes it or dies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import attrs

from ..handoff_counts import HandoffCounts

__all__ = ["ADOPT", "HAND_OVER", "HandoffRun", "handoff_targets"]

#: The master's commands on a worker's control socket, each with a channel's fd beside it:
#: serve the connections that arrive on it / move your connections over it, then retire.
ADOPT: Final = b"adopt"
HAND_OVER: Final = b"hand over"


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


@attrs.define(eq=False)
class HandoffRun:
    """One reload's handoff as the master follows it: the old workers it still waits for."""

    generation: int
    #: When the master sent the first command (its monotonic clock).
    started: float
    #: Old worker pids that have neither reported nor exited.
    pending: set[int]
    total: HandoffCounts = attrs.Factory(HandoffCounts)
    #: Old workers that exited without a report (killed, crashed): their connections
    #: went with them, as on any worker's death.
    unreported: int = 0

    def reported(self, pid: int, result: HandoffCounts) -> None:
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
