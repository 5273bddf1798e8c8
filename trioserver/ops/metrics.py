"""The master's view of every worker's statistics: slot totals, the Prometheus page, the summary.

::

    gatherer = Gatherer()
    gatherer.started(pid, index, generation)      # the master forked a worker
    gatherer.report(pid, payload)                 # a report arrived on its pipe
    gatherer.exited(pid, last_reports)            # it was reaped
    text = gatherer.render(health="serving")      # GET /metrics

Series are labelled by worker *slot* (``worker="1"``), not by process: a
respawned or reloaded worker continues its slot's series. Counters must never
go backwards, or Prometheus reads the drop as a counter reset and ``rate()``
invents a burst. So a slot's counter = the totals of its dead processes (their
last reports, kept in ``retired``) + the latest report of each live process of
that slot (during a reload the old and the new process overlap; both count).
When a process dies its last report moves from "live" to "retired" unchanged:
the sum stays the same. What a killed process counted after its last report
(at most ``metrics.interval`` seconds' worth) is lost, never subtracted; a
worker that exits normally sends a final report after its drain, so nothing
is lost. Only a master restart starts the counters from zero, which Prometheus
handles as the reset it is (``trioserver_master_start_time_seconds`` shows it).

Gauges (open connections, queue depth, outbox bytes, recent loop lag) are the
live processes' latest values, summed per slot (max for the lag).

A reload's handoff as a whole is the master's own (``trioserver_reload_handoff*``): each
old worker reports once what it moved, drained and failed to move, and the master times
the whole from its command to the last report.

The page is the Prometheus text exposition format 0.0.4, written here to the
spec so the master needs no client library; the tests parse it with
``prometheus_client``.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import attrs

from ..handoff_counts import HandoffCounts
from ..messages import ResultCode
from ..reasons import DropReason, HandoffKept, KickReason, TlsFailure
from ..stats import UNKNOWN_CODE, HistogramSnapshot, WorkerStatistics
from .procstat import ProcessFigures

__all__ = ["Gatherer", "HandoffTotals", "SlotView", "Totals", "format_bytes", "format_seconds"]

log = logging.getLogger("trioserver.metrics")

PREFIX: Final = "trioserver_"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


@attrs.define(eq=False)
class _Hist:
    """A histogram being summed: non-cumulative counts per bucket, and the sum."""

    bounds: tuple[float, ...]
    counts: list[int]
    sum: float = 0.0

    def add(self, snap: HistogramSnapshot) -> None:
        if snap.bounds != self.bounds:
            return  # a worker of another version: its buckets cannot be added
        for i, count in enumerate(snap.counts):
            self.counts[i] += count
        self.sum += snap.sum

    @classmethod
    def like(cls, snap: HistogramSnapshot) -> _Hist:
        return cls(snap.bounds, [0] * len(snap.counts))

    def copy(self) -> _Hist:
        return _Hist(self.bounds, list(self.counts), self.sum)


def _add_hist(into: dict[Any, _Hist], key: Any, snap: HistogramSnapshot) -> None:
    hist = into.get(key)
    if hist is None:
        hist = into[key] = _Hist.like(snap)
    hist.add(snap)


@attrs.define(eq=False)
class Totals:
    """Every counter of :class:`WorkerStatistics`, summed over reports."""

    accepted: int = 0
    refused: int = 0
    accept_errors: int = 0
    handler_errors: int = 0
    proxy_refused: int = 0
    packets: collections.Counter[int] = attrs.Factory(collections.Counter)
    drops: collections.Counter[str] = attrs.Factory(collections.Counter)
    kicks: collections.Counter[str] = attrs.Factory(collections.Counter)
    http: collections.Counter[int] = attrs.Factory(collections.Counter)
    handler_latency: dict[int, _Hist] = attrs.Factory(dict)
    loop_lag: dict[str, _Hist] = attrs.Factory(dict)
    #: ``"register:0"`` -> replies (:attr:`WorkerStatistics.account_results`).
    accounts: collections.Counter[str] = attrs.Factory(collections.Counter)
    tls_handshakes: int = 0
    tls_failures: collections.Counter[str] = attrs.Factory(collections.Counter)
    #: The hub's counters by name (:attr:`WorkerStatistics.hub`).
    hub: collections.Counter[str] = attrs.Factory(collections.Counter)
    network_refused: int = 0
    http_given_up: int = 0
    handoff_moved: int = 0
    handoff_adopted: int = 0
    handoff_refused: int = 0
    handoff_failed: int = 0
    handoff_kept: collections.Counter[str] = attrs.Factory(collections.Counter)

    def add(self, stats: WorkerStatistics) -> None:
        self.accepted += stats.connections_accepted
        self.refused += stats.connections_refused
        self.accept_errors += stats.accept_errors
        self.handler_errors += stats.handler_errors
        self.proxy_refused += stats.proxy_refused
        self.packets.update(stats.packets_by_code)
        self.drops.update(stats.drops_by_reason)
        self.kicks.update(stats.kicks_by_reason)
        self.http.update(stats.http_by_status)
        self.accounts.update(stats.account_results)
        self.hub.update(stats.hub)
        for code, snap in stats.handler_latency.items():
            _add_hist(self.handler_latency, code, snap)
        _add_hist(self.loop_lag, "", stats.loop_lag)
        self.tls_handshakes += stats.tls_handshakes
        self.tls_failures.update(stats.tls_failures_by_reason)
        self.network_refused += stats.network_refused
        self.http_given_up += stats.http_given_up
        self.handoff_moved += stats.handoff_moved
        self.handoff_adopted += stats.handoff_adopted
        self.handoff_refused += stats.handoff_refused
        self.handoff_failed += stats.handoff_failed
        self.handoff_kept.update(stats.handoff_kept_by_reason)

    def plus(self, other: Totals) -> Totals:
        out = self.copy()
        out.accepted += other.accepted
        out.refused += other.refused
        out.accept_errors += other.accept_errors
        out.handler_errors += other.handler_errors
        out.proxy_refused += other.proxy_refused
        out.packets.update(other.packets)
        out.drops.update(other.drops)
        out.kicks.update(other.kicks)
        out.http.update(other.http)
        out.accounts.update(other.accounts)
        out.tls_handshakes += other.tls_handshakes
        out.tls_failures.update(other.tls_failures)
        out.hub.update(other.hub)
        out.network_refused += other.network_refused
        out.http_given_up += other.http_given_up
        out.handoff_moved += other.handoff_moved
        out.handoff_adopted += other.handoff_adopted
        out.handoff_refused += other.handoff_refused
        out.handoff_failed += other.handoff_failed
        out.handoff_kept.update(other.handoff_kept)
        for name in ("handler_latency", "loop_lag"):
            mine: dict[Any, _Hist] = getattr(out, name)
            for key, hist in getattr(other, name).items():
                if key in mine:
                    snap = HistogramSnapshot(hist.bounds, tuple(hist.counts), hist.sum)
                    mine[key].add(snap)
                else:
                    mine[key] = hist.copy()
        return out

    def copy(self) -> Totals:
        return Totals(
            self.accepted,
            self.refused,
            self.accept_errors,
            self.handler_errors,
            self.proxy_refused,
            collections.Counter(self.packets),
            collections.Counter(self.drops),
            collections.Counter(self.kicks),
            collections.Counter(self.http),
            {k: h.copy() for k, h in self.handler_latency.items()},
            {k: h.copy() for k, h in self.loop_lag.items()},
            collections.Counter(self.accounts),
            self.tls_handshakes,
            collections.Counter(self.tls_failures),
            collections.Counter(self.hub),
            self.network_refused,
            self.http_given_up,
            self.handoff_moved,
            self.handoff_adopted,
            self.handoff_refused,
            self.handoff_failed,
            collections.Counter(self.handoff_kept),
        )

    def account_results(self, action: str) -> dict[str, int]:
        """``action``'s replies by result name, every code present (0 if none)."""
        out = {
            code.name.lower(): self.accounts.get(f"{action}:{code.value}", 0) for code in ResultCode
        }
        known = {f"{action}:{code.value}" for code in ResultCode}
        for key, count in sorted(self.accounts.items()):
            if key.startswith(f"{action}:") and key not in known:
                out[f"code_{key.partition(':')[2]}"] = count
        return out

    def refusals(self) -> dict[str, int]:
        """Every refusal by reason (:data:`REFUSALS`)."""
        return {reason: count(self) for reason, _, count in REFUSALS}


def _rate_limited(totals: Totals) -> int:
    code = ResultCode.RATE_LIMITED.value
    return sum(totals.accounts.get(f"{action}:{code}", 0) for action in ACCOUNT_ACTIONS)


#: The account messages whose results are counted.
ACCOUNT_ACTIONS: Final = ("register", "login", "resume")

#: Every way the server turns a client away: (reason, help, count from a slot's totals).
REFUSALS: Final[tuple[tuple[str, str, Callable[[Totals], int]], ...]] = (
    (
        "pool_full",
        "a new connection closed at once: server.max_connections connections were open",
        lambda t: t.refused,
    ),
    (
        "proxy",
        "a connection closed before its first byte was read: PROXY header missing, "
        "invalid, late, or from an untrusted address",
        lambda t: t.proxy_refused,
    ),
    (
        "network_cap",
        "a new connection closed at once: its client network held "
        "server.max_connections_per_network connections",
        lambda t: t.network_refused,
    ),
    (
        "login_timeout",
        "a binary connection closed for not logging in within connection.login_timeout",
        lambda t: t.kicks.get("login_timeout", 0),
    ),
    ("rate_limited", "a register or login answered 'rate limited'", _rate_limited),
)


@attrs.define(eq=False)
class HandoffTotals:
    """Every reload's handoff since the master started: old workers' results, summed."""

    moved: int = 0
    drained: collections.Counter[str] = attrs.Factory(collections.Counter)
    failed: int = 0
    #: Old workers that reported a result.
    workers: int = 0
    #: Reloads whose handoff ended, and how long the latest one took.
    handoffs: int = 0
    last_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "moved": self.moved,
            "drained": dict(sorted(self.drained.items())),
            "failed": self.failed,
            "workers": self.workers,
            "handoffs": self.handoffs,
            "last_seconds": self.last_seconds,
        }


@attrs.define(eq=False)
class _Live:
    index: int
    pid: int
    generation: int
    stats: WorkerStatistics | None = None
    #: Wall-clock time its latest report arrived.
    reported_at: float | None = None


@attrs.frozen
class SlotView:
    """One worker slot as the page shows it: counters over its whole life, live gauges."""

    index: int
    pids: tuple[int, ...]
    starts: int
    reporting: bool
    totals: Totals
    connections_open: int
    connections_resting: int
    connections_free: int
    queue_depth: int
    queue_capacity: int
    inbox_packets: int
    outbox_replies: int
    outbox_bytes: int
    loop_lag_recent_max: float
    #: CPU seconds of every process this slot ran; memory and fds of the live ones
    #: (None: not measured, see :mod:`trioserver.ops.procstat`).
    cpu_seconds: float | None = None
    resident_bytes: int | None = None
    open_fds: int | None = None
    #: When the latest report of a live process arrived (Unix time): rates are
    #: differences of counters over differences of this, not of the reader's clock.
    reported_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        t = self.totals
        refusals = t.refusals()
        return {
            "worker": self.index,
            "pids": list(self.pids),
            "starts": self.starts,
            "reporting": self.reporting,
            "connections_open": self.connections_open,
            "connections_resting": self.connections_resting,
            "connections_accepted": t.accepted,
            "connections_refused": t.refused,
            "packets": sum(t.packets.values()),
            "packets_by_code": {_code_label(k): v for k, v in sorted(t.packets.items())},
            "drops": sum(t.drops.values()),
            "drops_by_reason": dict(sorted(t.drops.items())),
            "kicks": sum(t.kicks.values()),
            "kicks_by_reason": dict(sorted(t.kicks.items())),
            "handler_errors": t.handler_errors,
            "queue_depth": self.queue_depth,
            "outbox_bytes": self.outbox_bytes,
            "loop_lag_recent_max": self.loop_lag_recent_max,
            "http_requests": sum(t.http.values()),
            "http_by_status": {str(k): v for k, v in sorted(t.http.items())},
            "refusals": sum(refusals.values()),
            "refusals_by_reason": refusals,
            "account_results": {action: t.account_results(action) for action in ACCOUNT_ACTIONS},
            "cpu_seconds": self.cpu_seconds,
            "resident_bytes": self.resident_bytes,
            "open_fds": self.open_fds,
            "reported_at": self.reported_at,
        }


class Gatherer:
    """Reports from every worker process, folded into per-slot series (module docstring)."""

    def __init__(
        self,
        *,
        wall_clock: float | None = None,
        process_figures: Callable[[int], ProcessFigures | None] | None = None,
        own_pid: Callable[[], int] = os.getpid,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.started_at = clock() if wall_clock is None else wall_clock
        self._clock = clock
        #: Reads a process's CPU, memory and fds (None: the page has no process series).
        self._process_figures = process_figures
        #: The master's pid, asked each time: a daemon's master forked after this was made.
        self._own_pid = own_pid
        #: CPU seconds of each slot's reaped processes (from wait4).
        self._retired_cpu: dict[int, float] = collections.defaultdict(float)
        #: Each live process's last figures, used while a read fails (an unreaped exit).
        self._last_figures: dict[int, ProcessFigures] = {}
        self._live: dict[int, _Live] = {}
        self._retired: dict[int, Totals] = {}
        self._starts: collections.Counter[int] = collections.Counter()
        self._bad_reports = 0
        self._next_summary: float | None = None
        self._last_summary: tuple[float, int, int] | None = None  # (time, packets, http)
        #: Reload handoffs (the master's own figures, not a slot's).
        self.handoffs = HandoffTotals()

    # -- events from the master ------------------------------------------------------------

    def started(self, pid: int, index: int, generation: int) -> None:
        self._live[pid] = _Live(index, pid, generation)
        self._starts[index] += 1
        self._retired.setdefault(index, Totals())

    def report(self, pid: int, payload: bytes) -> None:
        live = self._live.get(pid)
        if live is None:
            return
        try:
            live.stats = WorkerStatistics.from_json(payload)
            live.reported_at = self._clock()
        except (ValueError, KeyError, TypeError) as exc:
            self._bad_reports += 1
            if self._bad_reports == 1:
                log.error("worker pid %d sent a malformed statistics report: %s", pid, exc)

    def exited(
        self, pid: int, reports: Iterable[bytes] = (), cpu_seconds: float | None = None
    ) -> None:
        """``pid`` is gone: its last report (``reports`` came with its death) joins the totals,
        and so do the ``cpu_seconds`` it used in all (from ``wait4``)."""
        for payload in reports:
            self.report(pid, payload)
        live = self._live.pop(pid, None)
        last = self._last_figures.pop(pid, None)
        if live is None:
            return
        if live.stats is not None:
            self._retired.setdefault(live.index, Totals()).add(live.stats)
        if cpu_seconds is None and last is not None:
            cpu_seconds = last.cpu_seconds  # the most we know it used
        if cpu_seconds is not None:
            self._retired_cpu[live.index] += cpu_seconds

    def handoff(self, result: HandoffCounts) -> None:
        """An old worker's handoff result."""
        totals = self.handoffs
        totals.moved += result.moved
        totals.drained.update(result.kept)
        totals.failed += result.failed
        totals.workers += 1

    def handoff_done(self, seconds: float) -> None:
        """A reload's handoff ended after ``seconds`` (every old worker reported or exited)."""
        self.handoffs.handoffs += 1
        self.handoffs.last_seconds = seconds

    def _figures(self, pid: int) -> ProcessFigures | None:
        if self._process_figures is None:
            return None
        figures = self._process_figures(pid)
        if figures is None:
            return self._last_figures.get(pid)
        self._last_figures[pid] = figures
        return figures

    def master_figures(self) -> ProcessFigures | None:
        """The master's own CPU, memory and fds (None if not measured)."""
        if self._process_figures is None:
            return None
        return self._process_figures(self._own_pid())

    # -- views -----------------------------------------------------------------------------

    def slots(self) -> list[SlotView]:
        by_index: dict[int, list[_Live]] = collections.defaultdict(list)
        for live in self._live.values():
            by_index[live.index].append(live)
        views = []
        for index in sorted(set(self._retired) | set(by_index)):
            lives = sorted(by_index.get(index, []), key=lambda w: w.generation)
            totals = self._retired.get(index, Totals()).copy()
            gauges = collections.Counter[str]()
            lag = 0.0
            measured = self._process_figures is not None
            cpu = self._retired_cpu.get(index, 0.0)
            for live in lives:
                figures = self._figures(live.pid)
                if figures is not None:
                    cpu += figures.cpu_seconds
                    gauges["rss"] += figures.resident_bytes
                    gauges["fds"] += figures.open_fds
                stats = live.stats
                if stats is None:
                    continue
                totals.add(stats)
                gauges["open"] += stats.connections_open
                gauges["resting"] += stats.connections_resting
                gauges["free"] += stats.connections_free
                gauges["queue"] += stats.queue_depth
                gauges["capacity"] += stats.queue_capacity
                gauges["inbox"] += stats.inbox_packets
                gauges["replies"] += stats.outbox_replies
                gauges["bytes"] += stats.outbox_bytes
                lag = max(lag, stats.loop_lag_recent_max)
            views.append(
                SlotView(
                    index=index,
                    pids=tuple(live.pid for live in lives),
                    starts=self._starts[index],
                    reporting=any(live.stats is not None for live in lives),
                    totals=totals,
                    connections_open=gauges["open"],
                    connections_resting=gauges["resting"],
                    connections_free=gauges["free"],
                    queue_depth=gauges["queue"],
                    queue_capacity=gauges["capacity"],
                    inbox_packets=gauges["inbox"],
                    outbox_replies=gauges["replies"],
                    outbox_bytes=gauges["bytes"],
                    loop_lag_recent_max=lag,
                    cpu_seconds=cpu if measured else None,
                    resident_bytes=gauges["rss"] if measured else None,
                    open_fds=gauges["fds"] if measured else None,
                    reported_at=max(
                        (live.reported_at for live in lives if live.reported_at is not None),
                        default=None,
                    ),
                )
            )
        return views

    def render(self, *, health: str = "serving") -> str:
        """The Prometheus text page (format 0.0.4)."""
        return render_prometheus(
            self.slots(),
            self.started_at,
            health,
            len(self._live),
            self.master_figures(),
            self.handoffs,
        )

    def status_json(self, *, health: str, master_pid: int) -> bytes:
        """What ``python -m trioserver status`` and the dashboard show, from the slot views."""
        master = self.master_figures()
        return json.dumps(
            {
                "master_pid": master_pid,
                "health": health,
                "time": self._clock(),
                "master": {"pid": master_pid, **(master.to_json() if master else {})},
                "workers": [view.to_json() for view in self.slots()],
                "handoff": self.handoffs.to_json(),
            }
        ).encode()

    # -- the log summary -------------------------------------------------------------------

    def summary_deadline(self, interval: float, now: float) -> float | None:
        """When the next summary line is due (None: summaries are off)."""
        if interval <= 0:
            self._next_summary = None
            return None
        if self._next_summary is None:
            self._next_summary = now + interval
        return self._next_summary

    def summary_if_due(self, interval: float, now: float) -> str | None:
        """The one-line summary if its time has come (and schedule the next)."""
        deadline = self.summary_deadline(interval, now)
        if deadline is None or now < deadline:
            return None
        self._next_summary = now + interval
        return self.summary(now)

    def summary(self, now: float) -> str:
        views = self.slots()
        total = Totals()
        for view in views:
            total = total.plus(view.totals)
        packets = sum(total.packets.values())
        http = sum(total.http.values())
        rates = ""
        if self._last_summary is not None:
            then, old_packets, old_http = self._last_summary
            span = max(now - then, 1e-9)
            rates = f" ({(packets - old_packets) / span:.0f}/s)"
            http_rate = f" ({(http - old_http) / span:.0f}/s)"
        else:
            http_rate = ""
        self._last_summary = (now, packets, http)
        live = [v for v in views if v.pids]

        def breakdown(counter: Mapping[Any, int]) -> str:
            parts = [f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: -kv[1]) if v]
            return f" ({', '.join(parts)})" if parts else ""

        return (
            f"stats: {len(live)} workers; connections {sum(v.connections_open for v in views)} "
            f"open, {sum(v.connections_resting for v in views)} resting, "
            f"{total.accepted} accepted, {total.refused} refused; packets {packets}{rates}; "
            f"drops {sum(total.drops.values())}{breakdown(total.drops)}; "
            f"kicks {sum(total.kicks.values())}{breakdown(total.kicks)}; "
            f"queue {sum(v.queue_depth for v in views)}; "
            f"outbox {format_bytes(sum(v.outbox_bytes for v in views))}; "
            f"loop lag {format_seconds(max((v.loop_lag_recent_max for v in views), default=0))}; "
            f"http {http}{http_rate}{breakdown(total.http)}"
        )


# ---------------------------------------------------------------------------
# The text format.


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, object]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


class _Page:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, text: str, *, prefix: str = PREFIX) -> None:
        self.lines.append(f"# HELP {prefix}{name} {text}")
        self.lines.append(f"# TYPE {prefix}{name} {kind}")

    def sample(
        self, name: str, labels: Mapping[str, object], value: float, *, prefix: str = PREFIX
    ) -> None:
        self.lines.append(f"{prefix}{name}{_labels(labels)} {_number(value)}")

    def histogram(self, name: str, labels: Mapping[str, object], hist: _Hist) -> None:
        running = 0
        for bound, count in zip(hist.bounds, hist.counts, strict=False):
            running += count
            self.sample(f"{name}_bucket", {**labels, "le": _number(float(bound))}, running)
        running += hist.counts[-1]
        self.sample(f"{name}_bucket", {**labels, "le": "+Inf"}, running)
        self.sample(f"{name}_sum", labels, hist.sum)
        self.sample(f"{name}_count", labels, running)


#: Gauges read straight off a slot view: (metric, attribute, help).
_GAUGES: Final = (
    ("connections_open", "connections_open", "Connections open now."),
    ("connections_resting", "connections_resting", "Closed connections whose slot rests."),
    ("connections_free", "connections_free", "Free slots in the connection pool."),
    ("queue_depth", "queue_depth", "Connections waiting in the message queue."),
    ("queue_capacity", "queue_capacity", "Size of the message queue."),
    ("inbox_packets", "inbox_packets", "Packets waiting in connections' inboxes."),
    ("outbox_replies", "outbox_replies", "Replies waiting to be sent."),
    ("outbox_bytes", "outbox_bytes", "Reply bytes waiting to be sent."),
    (
        "event_loop_lag_recent_max_seconds",
        "loop_lag_recent_max",
        "Largest event-loop lag among the last few probes.",
    ),
)

#: Counters read off a slot's totals: (metric without _total, attribute, help).
_COUNTERS: Final = (
    ("connections_accepted", "accepted", "Connections accepted."),
    ("connections_refused", "refused", "Connections closed at once because the pool was full."),
    ("accept_errors", "accept_errors", "accept() failures (out of file descriptors...)."),
    ("handler_errors", "handler_errors", "Handler calls that raised."),
    ("proxy_refused", "proxy_refused", "Connections refused by the PROXY protocol rules."),
    (
        "network_refused",
        "network_refused",
        "Connections closed at once: their network held server.max_connections_per_network.",
    ),
    (
        "http_given_up",
        "http_given_up",
        "Idle HTTP keep-alive connections closed because the pool ran low.",
    ),
    ("tls_handshakes", "tls_handshakes", "TLS handshakes completed."),
    ("handoff_moved", "handoff_moved", "Connections handed to a new worker on a reload."),
    ("handoff_adopted", "handoff_adopted", "Connections adopted from an old worker on a reload."),
    (
        "handoff_refused",
        "handoff_refused",
        "Connections an old worker offered that this one refused (pool or network cap full).",
    ),
    (
        "handoff_failed",
        "handoff_failed",
        "Connections that were to move on a reload but drained: the new worker's channel broke.",
    ),
)


def render_prometheus(
    views: list[SlotView],
    started_at: float,
    health: str,
    processes: int,
    master: ProcessFigures | None = None,
    handoff: HandoffTotals | None = None,
) -> str:
    """Every metric, one series per worker slot (see the module docstring)."""
    page = _Page()
    if handoff is not None:
        _handoff_families(page, handoff)
    _process_families(page, views, master)
    page.family("master_start_time_seconds", "gauge", "When the master started (Unix time).")
    page.sample("master_start_time_seconds", {}, started_at)
    page.family("healthy", "gauge", "1 while the server serves, 0 while starting or draining.")
    page.sample("healthy", {}, 1 if health == "serving" else 0)
    page.family("worker_processes", "gauge", "Worker processes running now.")
    page.sample("worker_processes", {}, processes)
    page.family("worker_up", "gauge", "1 if a process of this slot is reporting.")
    for v in views:
        page.sample("worker_up", {"worker": v.index}, 1 if v.reporting else 0)
    page.family("worker_info", "gauge", "The processes serving each slot now.")
    for v in views:
        for pid in v.pids:
            page.sample("worker_info", {"worker": v.index, "pid": pid}, 1)
    page.family("worker_starts_total", "counter", "Processes started for this slot.")
    for v in views:
        page.sample("worker_starts_total", {"worker": v.index}, v.starts)
    for name, attr, text in _GAUGES:
        page.family(name, "gauge", text)
        for v in views:
            page.sample(name, {"worker": v.index}, getattr(v, attr))
    for name, attr, text in _COUNTERS:
        page.family(f"{name}_total", "counter", text)
        for v in views:
            page.sample(f"{name}_total", {"worker": v.index}, getattr(v.totals, attr))
    page.family(
        "packets_total", "counter", 'Packets received, by msgCode ("unknown": codes not served).'
    )
    for v in views:
        for code, count in sorted(v.totals.packets.items()):
            page.sample("packets_total", {"worker": v.index, "code": _code_label(code)}, count)
    for name, table, attr, text in (
        ("drops_total", DropReason, "drops", "Packets dropped without a reply, by reason."),
        ("kicks_total", KickReason, "kicks", "Connections closed by the server, by reason."),
        ("tls_failures_total", TlsFailure, "tls_failures", "TLS handshakes failed, by reason."),
        (
            "handoff_kept_total",
            HandoffKept,
            "handoff_kept",
            "Connections a reload's handoff left to drain in the old worker, by reason.",
        ),
    ):
        page.family(name, "counter", text)
        for v in views:
            counts: Mapping[str, int] = getattr(v.totals, attr)
            reasons = [r.value for r in table] + sorted(set(counts) - {r.value for r in table})
            for reason in reasons:
                page.sample(name, {"worker": v.index, "reason": reason}, counts.get(reason, 0))
    page.family(
        "hub_total",
        "counter",
        "The hub's pushes: published, delivered (into outboxes), remote_sent / remote_received "
        "(to and from the other workers or the bus), remote_dropped (a peer's queue full or it "
        "unreachable), remote_errors (the bus down: local delivery only).",
    )
    for v in views:
        for counter in ("published", "delivered", "remote_sent", "remote_received",
                        "remote_dropped", "remote_errors"):  # fmt: skip
            page.sample("hub_total", {"worker": v.index, "counter": counter}, v.totals.hub[counter])
    page.family(
        "account_results_total", "counter", "Register and login replies, by action and result."
    )
    for v in views:
        for action in ACCOUNT_ACTIONS:
            for result, count in v.totals.account_results(action).items():
                labels = {"worker": v.index, "action": action, "result": result}
                page.sample("account_results_total", labels, count)
    page.family(
        "refusals_total",
        "counter",
        "Clients turned away, by reason: "
        + "; ".join(f"{reason}: {text}" for reason, text, _ in REFUSALS)
        + ".",
    )
    for v in views:
        for reason, count in v.totals.refusals().items():
            page.sample("refusals_total", {"worker": v.index, "reason": reason}, count)
    page.family("http_requests_total", "counter", "HTTP requests answered, by status.")
    for v in views:
        for status, count in sorted(v.totals.http.items()):
            page.sample("http_requests_total", {"worker": v.index, "status": status}, count)
    page.family(
        "handler_seconds",
        "histogram",
        "Handler time by msgCode (plain handlers: one batch in metrics.handler_timing).",
    )
    for v in views:
        for code, hist in sorted(v.totals.handler_latency.items()):
            page.histogram("handler_seconds", {"worker": v.index, "code": code}, hist)
    page.family("event_loop_lag_seconds", "histogram", "How late the worker's lag timer woke.")
    for v in views:
        for hist in v.totals.loop_lag.values():
            page.histogram("event_loop_lag_seconds", {"worker": v.index}, hist)
    return "\n".join(page.lines) + "\n"


def _handoff_families(page: _Page, totals: HandoffTotals) -> None:
    """The reloads' handoffs as a whole (what each slot moved, kept and failed to move
    are the slots' own counters)."""
    page.family("reload_handoffs_total", "counter", "Reloads whose handoff ended.")
    page.sample("reload_handoffs_total", {}, totals.handoffs)
    if totals.last_seconds is not None:
        page.family(
            "reload_handoff_last_seconds",
            "gauge",
            "How long the latest reload's handoff took, from the master's command to the "
            "last old worker's report.",
        )
        page.sample("reload_handoff_last_seconds", {}, totals.last_seconds)


def _code_label(code: int) -> str:
    return "unknown" if code == UNKNOWN_CODE else str(code)


#: The process series, named and explained as Prometheus client libraries export them.
_PROCESS: Final = (
    ("process_cpu_seconds_total", "counter", "cpu_seconds",
     "Total user and system CPU time spent in seconds."),
    ("process_resident_memory_bytes", "gauge", "resident_bytes", "Resident memory size in bytes."),
    ("process_open_fds", "gauge", "open_fds", "Number of open file descriptors."),
)  # fmt: skip


def _process_families(page: _Page, views: list[SlotView], master: ProcessFigures | None) -> None:
    """``process_*`` without our prefix, one series for the master and one per worker slot."""
    if master is None and all(v.cpu_seconds is None for v in views):
        return
    for name, kind, attr, text in _PROCESS:
        page.family(name, kind, text, prefix="")
        if master is not None:
            page.sample(name, {"process": "master"}, getattr(master, attr), prefix="")
        for v in views:
            value = getattr(v, attr)
            if value is not None:
                labels = {"process": "worker", "worker": v.index}
                page.sample(name, labels, value, prefix="")


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"
