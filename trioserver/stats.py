"""A worker's counters, and the one place drops and kicks are counted and logged.

Counters are plain ints and dicts bumped on the hot path; ``snapshot()`` turns
them into a frozen record (trio's ``statistics()`` convention). Logging a drop
happens once per connection and reason, so a client sending garbage costs one
log line, not one per packet; and those lines, with the kicks', go through a
:class:`~trioserver.log_budget.LogBudget`, so many such clients cost a few lines
and a count per interval, not a line each.

Timing is what costs on the hot path (two clock reads and a bucket update are
~0.3 µs, over a tenth of a ping's 2.5 µs budget when a core is to answer 400k
pings/s), so handler latency is sampled: the
handlers of one batch in ``metrics.handler_timing`` are timed, one by one, and
the rest are not timed at all (``Counters.until_timed``). Async handlers, which
wait on threads or the network, are always timed. Event-loop lag comes from a
timer task (:func:`watch_loop_lag`), not from a per-task-step instrument.
"""

from __future__ import annotations

import bisect
import collections
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol

import attrs
import trio

from .config import LoggingSettings
from .log_budget import LogBudget
from .nursery_pool import PoolStatistics
from .reasons import DropReason, KickReason

__all__ = [
    "HANDLER_BUCKETS",
    "LAG_BUCKETS",
    "UNKNOWN_CODE",
    "Counters",
    "Histogram",
    "HistogramSnapshot",
    "WorkerStatistics",
    "watch_loop_lag",
]

#: Upper bounds (seconds) of the handler-latency buckets: plain handlers take
#: microseconds, handlers that hash a password or ask a database take tens of ms.
HANDLER_BUCKETS: Final = (
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
    1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
#: Upper bounds (seconds) of the event-loop lag buckets.
LAG_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
#: The ``packets_by_code`` key of packets whose msgCode nobody serves (``code="unknown"``
#: on the page). msgCodes are u16, so no real code is negative.
UNKNOWN_CODE: Final = -1
#: ``until_timed`` when handler timing is off: never reaches zero.
_NEVER: Final = 1 << 62

log = logging.getLogger("trioserver.worker")


class Counted(Protocol):
    """A connection as counting and logging see it."""

    @property
    def peer(self) -> object: ...
    @property
    def id(self) -> str: ...

    logged_drops: set[Any] | None


def _connection_log() -> LogBudget:
    defaults = LoggingSettings()
    return LogBudget(
        log, lines=defaults.connection_lines, interval=defaults.connection_lines_interval
    )


@attrs.frozen
class HistogramSnapshot:
    """A histogram's buckets at one instant: ``counts[i]`` observations <= ``bounds[i]``
    and above the bound before (not cumulative); the last count is above every bound."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def to_json(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> HistogramSnapshot:
        bounds = tuple(float(b) for b in raw["bounds"])
        counts = tuple(int(c) for c in raw["counts"])
        if len(counts) != len(bounds) + 1:
            raise ValueError(f"histogram has {len(counts)} counts for {len(bounds)} bounds")
        return cls(bounds, counts, float(raw["sum"]))


@attrs.define(eq=False, slots=True)
class Histogram:
    """Observations counted in fixed buckets; cheap enough to call per sample."""

    bounds: tuple[float, ...]
    counts: list[int]
    sum: float = 0.0

    @classmethod
    def of(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls(bounds, [0] * (len(bounds) + 1))

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.sum)


@attrs.frozen
class WorkerStatistics:
    """One worker at one instant; every mapping is keyed by a counter label.

    Everything but the gauges (open, resting, free, queue, inbox, outbox, lag
    recent max) only grows during a worker's life, which is what lets the master
    add a dead worker's last report to its slot's totals.
    """

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
    http_by_status: Mapping[int, int] = attrs.field(factory=dict)
    proxy_refused: int = 0
    #: Register and login replies by ``"<action>:<result code>"`` (``"login:1"``).
    account_results: Mapping[str, int] = attrs.field(factory=dict)
    #: Handler time by msgCode (sampled for plain handlers; see the module docstring).
    handler_latency: Mapping[int, HistogramSnapshot] = attrs.field(factory=dict)
    loop_lag: HistogramSnapshot = HistogramSnapshot(LAG_BUCKETS, (0,) * (len(LAG_BUCKETS) + 1), 0.0)
    #: Largest lag among the last few samples (about one report interval's worth).
    loop_lag_recent_max: float = 0.0
    #: TLS handshakes completed, and those that failed by reason (tls_transport.TlsFailure).
    tls_handshakes: int = 0
    tls_failures_by_reason: Mapping[str, int] = attrs.field(factory=dict)
    #: The hub's counters by name (``HubStatistics.counters``): pushes, remote traffic, errors.
    hub: Mapping[str, int] = attrs.field(factory=dict)
    #: Connections refused because their network held ``max_connections_per_network``.
    network_refused: int = 0
    #: Idle HTTP keep-alive connections closed because the pool ran low.
    http_given_up: int = 0
    #: A reload's handoff (``Worker.hand_over`` / ``adopt_from``): connections moved to
    #: a new worker, adopted from an old one, refused while adopting (pool full), failed
    #: to move (the channel broke), and kept here to drain by reason (``HandoffKept``).
    handoff_moved: int = 0
    handoff_adopted: int = 0
    handoff_refused: int = 0
    handoff_failed: int = 0
    handoff_kept_by_reason: Mapping[str, int] = attrs.field(factory=dict)

    def to_json(self) -> bytes:
        """The record as JSON (int keys become strings), for the pipe to the master."""
        raw: dict[str, Any] = {}
        for field in attrs.fields(WorkerStatistics):
            value = getattr(self, field.name)
            if isinstance(value, HistogramSnapshot):
                value = value.to_json()
            elif isinstance(value, Mapping):
                value = {
                    str(k): v.to_json() if isinstance(v, HistogramSnapshot) else v
                    for k, v in value.items()
                }
            raw[field.name] = value
        return json.dumps(raw, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> WorkerStatistics:
        """Parse :meth:`to_json`'s output; ValueError (or KeyError/TypeError) if malformed."""
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("a statistics report must be a JSON object")

        def ints(name: str) -> dict[int, int]:
            return {int(k): int(v) for k, v in raw.get(name, {}).items()}

        def strs(name: str) -> dict[str, int]:
            return {str(k): int(v) for k, v in raw.get(name, {}).items()}

        return cls(
            connections_open=int(raw["connections_open"]),
            connections_resting=int(raw["connections_resting"]),
            connections_free=int(raw["connections_free"]),
            connections_accepted=int(raw["connections_accepted"]),
            connections_refused=int(raw["connections_refused"]),
            packets_by_code=ints("packets_by_code"),
            drops_by_reason=strs("drops_by_reason"),
            kicks_by_reason=strs("kicks_by_reason"),
            handler_errors=int(raw["handler_errors"]),
            queue_depth=int(raw["queue_depth"]),
            queue_capacity=int(raw["queue_capacity"]),
            inbox_packets=int(raw["inbox_packets"]),
            outbox_replies=int(raw["outbox_replies"]),
            outbox_bytes=int(raw["outbox_bytes"]),
            accept_errors=int(raw["accept_errors"]),
            http_by_status=ints("http_by_status"),
            proxy_refused=int(raw.get("proxy_refused", 0)),
            account_results=strs("account_results"),
            handler_latency={
                int(k): HistogramSnapshot.from_json(v)
                for k, v in raw.get("handler_latency", {}).items()
            },
            loop_lag=HistogramSnapshot.from_json(raw["loop_lag"]),
            loop_lag_recent_max=float(raw.get("loop_lag_recent_max", 0.0)),
            tls_handshakes=int(raw.get("tls_handshakes", 0)),
            tls_failures_by_reason=strs("tls_failures_by_reason"),
            hub=strs("hub"),
            network_refused=int(raw.get("network_refused", 0)),
            http_given_up=int(raw.get("http_given_up", 0)),
            handoff_moved=int(raw.get("handoff_moved", 0)),
            handoff_adopted=int(raw.get("handoff_adopted", 0)),
            handoff_refused=int(raw.get("handoff_refused", 0)),
            handoff_failed=int(raw.get("handoff_failed", 0)),
            handoff_kept_by_reason=strs("handoff_kept_by_reason"),
        )


@attrs.define(eq=False)
class Counters:
    """What one worker counts; mutated in place on the hot path."""

    accepted: int = 0
    refused: int = 0
    accept_errors: int = 0
    handler_errors: int = 0
    #: Connections closed for a missing, invalid or untrusted PROXY header.
    proxy_refused: int = 0
    #: Connections refused because their network held ``max_connections_per_network``.
    network_refused: int = 0
    #: Idle HTTP keep-alive connections closed because the pool ran low.
    http_given_up: int = 0
    packets_by_code: collections.Counter[int] = attrs.Factory(collections.Counter)
    drops: collections.Counter[str] = attrs.Factory(collections.Counter)
    kicks: collections.Counter[str] = attrs.Factory(collections.Counter)
    http_by_status: collections.Counter[int] = attrs.Factory(collections.Counter)
    #: Register and login results: ``"register:0"`` -> count (see :meth:`account_result`).
    account_results: collections.Counter[str] = attrs.Factory(collections.Counter)
    #: Handler latency by msgCode, and the batch countdown that samples it: the
    #: message queue times one batch whenever this reaches zero (see the module
    #: docstring), then resets it to ``timing_every``.
    handler_latency: dict[int, Histogram] = attrs.Factory(dict)
    timing_every: int = 0
    until_timed: int = _NEVER
    loop_lag: Histogram = attrs.Factory(lambda: Histogram.of(LAG_BUCKETS))
    recent_lag: collections.deque[float] = attrs.Factory(lambda: collections.deque(maxlen=8))
    #: Fold the packet counts of unserved msgCodes into ``UNKNOWN_CODE`` (see
    #: :meth:`serve_codes`); the codes served, once the application's router is known.
    fold_unknown: bool = True
    served_codes: frozenset[int] | None = None
    #: Where drop and kick lines go: a few in full per interval, the rest counted
    #: (:mod:`trioserver.log_budget`; run ``connection_log.run`` for timely summaries).
    connection_log: LogBudget = attrs.Factory(_connection_log)
    #: TLS handshakes completed, and failed ones by reason (counted by tls_transport).
    tls_handshakes: int = 0
    tls_failures: collections.Counter[str] = attrs.Factory(collections.Counter)
    #: A reload's handoff (see :class:`WorkerStatistics`).
    handoff_moved: int = 0
    handoff_adopted: int = 0
    handoff_refused: int = 0
    handoff_failed: int = 0
    handoff_kept: collections.Counter[str] = attrs.Factory(collections.Counter)

    def limit_connection_lines(self, settings: LoggingSettings) -> None:
        """Apply ``logging.connection_lines`` and ``connection_lines_interval``."""
        self.connection_log.lines = settings.connection_lines
        self.connection_log.interval = settings.connection_lines_interval

    def serve_codes(self, codes: Iterable[int], *, fold: bool = True) -> None:
        """Keep per-code packet counts for ``codes`` only; count the rest as unknown.

        The client chooses the msgCode, so a series per code it sends is a series
        it creates. The per-packet count stays a plain ``Counter`` bump; codes
        nobody serves are moved to ``UNKNOWN_CODE`` when dropped (:meth:`drop`)
        and, for whatever else reached the counter, at each :meth:`snapshot`.
        """
        self.fold_unknown = fold
        self.served_codes = frozenset(codes) if fold else None
        self._fold_unserved()

    def _fold_unserved(self) -> None:
        served = self.served_codes
        if served is None:
            return
        by_code = self.packets_by_code
        stray = [code for code in by_code if code not in served and code != UNKNOWN_CODE]
        for code in stray:
            by_code[UNKNOWN_CODE] += by_code.pop(code)

    def time_handlers(self, every: int) -> None:
        """Time the handlers of one batch in ``every`` (0: never)."""
        self.timing_every = every
        self.until_timed = 1 if every > 0 else _NEVER  # the first batch is timed

    def observe_handler(self, code: int, seconds: float) -> None:
        """One handler call on ``code`` took ``seconds``."""
        histogram = self.handler_latency.get(code)
        if histogram is None:
            histogram = self.handler_latency[code] = Histogram.of(HANDLER_BUCKETS)
        histogram.observe(seconds)

    def timed_batch(self) -> None:
        """A batch was timed: count down to the next one again."""
        self.until_timed = self.timing_every if self.timing_every > 0 else _NEVER

    def account_result(self, action: str, code: int, count: int = 1) -> None:
        """Count ``count`` ``register`` or ``login`` replies with result ``code`` (a ResultCode)."""
        self.account_results[f"{action}:{int(code)}"] += count

    def observe_lag(self, seconds: float) -> None:
        self.loop_lag.observe(seconds)
        self.recent_lag.append(seconds)

    def drop(self, conn: Counted, reason: DropReason, code: int, count: int = 1) -> None:
        """Count ``count`` dropped packets; log the first of each reason per connection."""
        self.drops[reason.value] += count
        if self.fold_unknown and code != UNKNOWN_CODE:
            served = self.served_codes
            if reason is DropReason.UNKNOWN_CODE or (served is not None and code not in served):
                by_code = self.packets_by_code
                moved = min(count, by_code.get(code, 0))
                if moved:
                    by_code[UNKNOWN_CODE] += moved
                    left = by_code[code] - moved
                    if left:
                        by_code[code] = left
                    else:
                        del by_code[code]
        logged = conn.logged_drops
        if logged is None:
            logged = conn.logged_drops = set()
        if reason not in logged:
            logged.add(reason)
            self.connection_log.line(
                reason.value,
                "dropped from %s (conn %s): %s (msgCode %d); further drops of this kind "
                "on this connection are counted, not logged",
                conn.peer,
                conn.id,
                reason,
                code,
            )

    def refuse(self) -> None:
        """Count one connection refused at accept because ``max_connections`` were live
        (the master's page shows it as the refusal reason ``pool_full``)."""
        self.refused += 1

    def refuse_network(self, peer: object, network: str, limit: int) -> None:
        """Count and log one connection refused because its network held ``limit``
        connections (``server.max_connections_per_network``; reason ``network_cap``)."""
        self.network_refused += 1
        self.connection_log.line(
            "network_cap",
            "refused %s: its network %s holds %d connections (server.max_connections_per_network)",
            peer,
            network,
            limit,
        )

    def kick(self, conn: Counted, reason: KickReason) -> None:
        """Count and log one kick (called once per closed connection)."""
        self.kicks[reason.value] += 1
        self.connection_log.line(
            reason.value, "closed %s (conn %s): it %s", conn.peer, conn.id, reason
        )

    def snapshot(
        self,
        pool: PoolStatistics,
        queue_depth: int,
        queue_capacity: int,
        *,
        inbox_packets: int,
        outbox_replies: int,
        outbox_bytes: int,
    ) -> WorkerStatistics:
        self._fold_unserved()
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
            inbox_packets=inbox_packets,
            outbox_replies=outbox_replies,
            outbox_bytes=outbox_bytes,
            accept_errors=self.accept_errors,
            http_by_status=dict(self.http_by_status),
            proxy_refused=self.proxy_refused,
            account_results=dict(self.account_results),
            handler_latency={code: h.snapshot() for code, h in self.handler_latency.items()},
            loop_lag=self.loop_lag.snapshot(),
            loop_lag_recent_max=max(self.recent_lag, default=0.0),
            tls_handshakes=self.tls_handshakes,
            tls_failures_by_reason=dict(self.tls_failures),
            network_refused=self.network_refused,
            http_given_up=self.http_given_up,
            handoff_moved=self.handoff_moved,
            handoff_adopted=self.handoff_adopted,
            handoff_refused=self.handoff_refused,
            handoff_failed=self.handoff_failed,
            handoff_kept_by_reason=dict(self.handoff_kept),
        )


async def watch_loop_lag(counters: Counters, interval: float) -> None:
    """Sleep ``interval`` over and over; how late each wake-up comes is the loop's lag.

    A task that hogs the loop (a blocking call, a long batch) delays every other
    task by as much; this timer sees that delay as lateness. It costs one wake-up
    per interval, unlike an instrument called on every task step.
    """
    clock = trio.current_time
    while True:
        start = clock()
        await trio.sleep(interval)
        counters.observe_lag(max(0.0, clock() - start - interval))
