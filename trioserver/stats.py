"""A worker's counters, and the one place drops and kicks are counted and logged.

Counters are plain ints and dicts bumped on the hot path; ``snapshot()`` turns
them into a frozen record (trio's ``statistics()`` convention). Logging a drop
happens once per connection and reason, so a client sending garbage costs one
log line, not one per packet.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping

import attrs

from .nursery_pool import Connection, PoolStatistics
from .reasons import DropReason, KickReason

__all__ = ["Counters", "WorkerStatistics"]

log = logging.getLogger("trioserver.worker")


@attrs.frozen
class WorkerStatistics:
    """One worker at one instant; every mapping is keyed by a counter label."""

    connections_open: int
    connections_resting: int
    connections_free: int
    connections_accepted: int
    connections_refused: int
    packets_by_code: Mapping[int, int]
    drops_by_reason: Mapping[str, int]
    kicks_by_reason: Mapping[str, int]
    handler_errors: int
    queue_depth: int
    queue_capacity: int
    inbox_packets: int
    outbox_replies: int
    outbox_bytes: int
    accept_errors: int


@attrs.define(eq=False)
class Counters:
    """What one worker counts; mutated in place on the hot path."""

    accepted: int = 0
    refused: int = 0
    accept_errors: int = 0
    handler_errors: int = 0
    #: Connections closed for a missing, invalid or untrusted PROXY header (issue 8).
    proxy_refused: int = 0
    packets_by_code: collections.Counter[int] = attrs.Factory(collections.Counter)
    drops: collections.Counter[str] = attrs.Factory(collections.Counter)
    kicks: collections.Counter[str] = attrs.Factory(collections.Counter)
    http_by_status: collections.Counter[int] = attrs.Factory(collections.Counter)

    def drop(self, conn: Connection, reason: DropReason, code: int, count: int = 1) -> None:
        """Count ``count`` dropped packets; log the first of each reason per connection."""
        self.drops[reason.value] += count
        logged = conn.logged_drops
        if logged is None:
            logged = conn.logged_drops = set()
        if reason not in logged:
            logged.add(reason)
            log.info(
                "dropped from %s (conn %s): %s (msgCode %d); further drops of this kind "
                "on this connection are counted, not logged",
                conn.peer,
                conn.id,
                reason,
                code,
            )

    def kick(self, conn: Connection, reason: KickReason) -> None:
        """Count and log one kick (called once per closed connection)."""
        self.kicks[reason.value] += 1
        log.info("closed %s (conn %s): it %s", conn.peer, conn.id, reason)

    def snapshot(
        self,
        pool: PoolStatistics,
        connections: list[Connection],
        queue_depth: int,
        queue_capacity: int,
    ) -> WorkerStatistics:
        return WorkerStatistics(
            connections_open=pool.in_use,
            connections_resting=pool.resting,
            connections_free=pool.free,
            connections_accepted=self.accepted,
            connections_refused=self.refused,
            packets_by_code=dict(self.packets_by_code),
            drops_by_reason=dict(self.drops),
            kicks_by_reason=dict(self.kicks),
            handler_errors=self.handler_errors,
            queue_depth=queue_depth,
            queue_capacity=queue_capacity,
            inbox_packets=sum(len(c.inbox) for c in connections),
            outbox_replies=sum(c.pending_replies for c in connections),
            outbox_bytes=sum(c.pending_bytes for c in connections),
            accept_errors=self.accept_errors,
        )
