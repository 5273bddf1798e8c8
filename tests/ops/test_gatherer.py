"""The master's folding of worker reports: slot totals that never go backwards, and the page."""

from __future__ import annotations

import json
from collections.abc import Iterator

import attrs
import pytest

from trioserver.ops.metrics import Gatherer
from trioserver.ops.procstat import ProcessFigures
from trioserver.stats import Counters, HistogramSnapshot, WorkerStatistics

parser = pytest.importorskip("prometheus_client.parser")


def stats(
    packets: int = 0,
    *,
    drops: int = 0,
    kicks: int = 0,
    http404: int = 0,
    open_: int = 0,
    timed: tuple[float, ...] = (),
) -> WorkerStatistics:
    """A worker's report with these figures, made the way a worker makes it."""
    counters = Counters()
    counters.packets_by_code[0] = packets
    if drops:
        counters.drops["bad_crc"] = drops
    if kicks:
        counters.kicks["flood"] = kicks
    if http404:
        counters.http_by_status[404] = http404
    for seconds in timed:
        counters.observe_handler(0, seconds)
    counters.observe_lag(0.002)
    from trioserver.nursery_pool import PoolStatistics

    pool = PoolStatistics(100, open_, 0, 100 - open_, 0, 0)
    return counters.snapshot(pool, 0, 1024, inbox_packets=0, outbox_replies=0, outbox_bytes=0)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(text: str, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in samples(text).items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


def test_report_round_trips_through_json() -> None:
    original = stats(7, drops=1, kicks=2, http404=3, timed=(1e-6, 3e-3))
    assert WorkerStatistics.from_json(original.to_json()) == original


def test_a_dead_workers_last_report_stays_in_its_slot() -> None:
    g = Gatherer()
    g.started(101, 1, 0)
    g.started(102, 2, 0)
    g.report(101, stats(10, kicks=1, open_=3).to_json())
    g.report(102, stats(5).to_json())
    before = g.render()
    assert total(before, "trioserver_packets_total") == 15
    assert total(before, "trioserver_connections_open") == 3

    g.exited(101)  # killed: its last report moves to the slot's totals
    g.started(103, 1, 0)
    after_death = g.render()
    assert total(after_death, "trioserver_packets_total", worker="1") == 10
    assert total(after_death, "trioserver_kicks_total", reason="flood") == 1
    assert total(after_death, "trioserver_connections_open") == 0  # gauges: live only
    assert total(after_death, "trioserver_worker_starts_total", worker="1") == 2

    g.report(103, stats(2).to_json())  # the new process starts from zero ...
    assert total(g.render(), "trioserver_packets_total", worker="1") == 12  # ... added on


def test_reports_that_come_with_the_death_are_counted() -> None:
    g = Gatherer()
    g.started(101, 1, 0)
    g.report(101, stats(10).to_json())
    g.exited(101, [stats(11).to_json(), stats(14).to_json()])
    assert total(g.render(), "trioserver_packets_total") == 14


def test_reload_overlap_counts_old_and_new_process_of_a_slot() -> None:
    g = Gatherer()
    g.started(101, 1, 0)
    g.report(101, stats(10, open_=2).to_json())
    g.started(201, 1, 1)  # the reload's new worker of slot 1, while the old one drains
    g.report(201, stats(4, open_=1).to_json())
    page = g.render()
    assert total(page, "trioserver_packets_total", worker="1") == 14
    assert total(page, "trioserver_connections_open", worker="1") == 3
    g.exited(101)
    assert total(g.render(), "trioserver_packets_total", worker="1") == 14


def sequence() -> Iterator[str]:
    """Pages along a life of respawns and reports, for the monotonicity check."""
    g = Gatherer()
    pid = 100
    for index in (1, 2):
        pid += 1
        g.started(pid, index, 0)
    live = {1: 101, 2: 102}
    counts = {101: 0, 102: 0}
    for step in range(40):
        index = 1 + step % 2
        p = live[index]
        counts[p] += step
        g.report(p, stats(counts[p], drops=step, kicks=step // 3).to_json())
        yield g.render()
        if step % 7 == 6:  # kill it; a new process takes the slot
            g.exited(p)
            pid += 1
            live[index] = pid
            counts[pid] = 0
            g.started(pid, index, 0)
            yield g.render()


def test_no_counter_ever_goes_backwards() -> None:
    previous: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for page in sequence():
        now = samples(page)
        for key, value in now.items():
            name = key[0]
            is_counter = name.endswith(("_total", "_bucket", "_count", "_sum"))
            if is_counter and key in previous:
                assert value >= previous[key], key
        for key in previous:
            if key[0].endswith("_total") and "worker_info" not in key[0]:
                assert key in now, f"{key} vanished"
        previous = now


def test_page_is_well_formed() -> None:
    g = Gatherer(wall_clock=1700000000.0)
    g.started(101, 1, 0)
    g.report(101, stats(3, timed=(2e-6, 2e-6, 0.2)).to_json())
    text = g.render(health="draining")
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert families["trioserver_handler_seconds"].type == "histogram"
    assert families["trioserver_packets"].type == "counter"
    assert samples(text)[("trioserver_healthy", ())] == 0
    buckets = [
        (float(dict(ls)["le"]), v)
        for (n, ls), v in samples(text).items()
        if n == "trioserver_handler_seconds_bucket"
    ]
    counts = [v for _, v in sorted(buckets)]
    assert counts == sorted(counts) and counts[-1] == 3  # cumulative, +Inf = count
    assert total(text, "trioserver_handler_seconds_count") == 3
    # Each family's TYPE line appears once, before its samples.
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))
    # Every reason has a series from the start, so rate() sees the first increment.
    assert total(text, "trioserver_kicks_total", reason="heartbeat") == 0
    assert ("trioserver_kicks_total", (("reason", "heartbeat"), ("worker", "1"))) in samples(text)


def test_malformed_report_is_ignored_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    g = Gatherer()
    g.started(101, 1, 0)
    g.report(101, stats(5).to_json())
    g.report(101, b"{not json")
    g.report(101, b'{"connections_open": 1}')
    assert total(g.render(), "trioserver_packets_total") == 5
    assert sum("malformed" in r.message for r in caplog.records) == 1


def test_summary_line_and_its_deadline() -> None:
    g = Gatherer()
    g.started(101, 1, 0)
    g.report(101, stats(100, drops=2, http404=1).to_json())
    assert g.summary_if_due(10.0, now=0.0) is None
    assert g.summary_deadline(10.0, now=1.0) == 10.0
    line = g.summary_if_due(10.0, now=10.0)
    assert line is not None
    assert "packets 100" in line and "drops 2 (bad_crc 2)" in line and "(404 1)" in line
    g.report(101, stats(200).to_json())
    line = g.summary_if_due(10.0, now=20.0)
    assert line is not None and "packets 200 (10/s)" in line
    assert g.summary_deadline(0.0, now=21.0) is None


def test_histogram_snapshot_rejects_mismatched_counts() -> None:
    with pytest.raises(ValueError, match="counts"):
        HistogramSnapshot.from_json({"bounds": [1.0], "counts": [1], "sum": 0})
    assert attrs.has(HistogramSnapshot)


# -- process figures, account results, refusals ----------------------------------------------


class FakeProcesses:
    """What /proc would say about each pid; a missing pid reads as None (gone)."""

    def __init__(self) -> None:
        self.figures: dict[int, ProcessFigures] = {}

    def __call__(self, pid: int) -> ProcessFigures | None:
        return self.figures.get(pid)


def test_process_figures_for_the_master_and_each_slot() -> None:
    procs = FakeProcesses()
    g = Gatherer(process_figures=procs, own_pid=lambda: 7)
    procs.figures[7] = ProcessFigures(0.5, 30_000_000, 12)
    g.started(101, 1, 0)
    g.started(102, 2, 0)
    procs.figures[101] = ProcessFigures(1.5, 40_000_000, 20)
    procs.figures[102] = ProcessFigures(0.25, 35_000_000, 18)
    page = samples(g.render())
    assert page["process_cpu_seconds_total", (("process", "master"),)] == 0.5
    worker1 = (("process", "worker"), ("worker", "1"))
    assert page["process_cpu_seconds_total", worker1] == 1.5
    assert page["process_resident_memory_bytes", worker1] == 40_000_000
    assert page["process_open_fds", (("process", "worker"), ("worker", "2"))] == 18
    status = json.loads(g.status_json(health="serving", master_pid=7))
    assert status["master"] == {"pid": 7, "cpu_seconds": 0.5, "resident_bytes": 30_000_000,
                                "open_fds": 12}  # fmt: skip
    assert status["workers"][0]["cpu_seconds"] == 1.5


def test_a_slots_cpu_never_goes_backwards_across_a_respawn() -> None:
    procs = FakeProcesses()
    g = Gatherer(process_figures=procs, own_pid=lambda: 7)
    g.started(101, 1, 0)
    procs.figures[101] = ProcessFigures(1.5, 40_000_000, 20)
    cpu = (("process", "worker"), ("worker", "1"))
    assert samples(g.render())["process_cpu_seconds_total", cpu] == 1.5
    del procs.figures[101]  # exited, not reaped yet: the last figures stand in
    assert samples(g.render())["process_cpu_seconds_total", cpu] == 1.5
    g.exited(101, cpu_seconds=1.75)  # what wait4 says it used in all
    g.started(103, 1, 0)
    procs.figures[103] = ProcessFigures(0.25, 30_000_000, 15)
    page = samples(g.render())
    assert page["process_cpu_seconds_total", cpu] == 2.0
    assert page["process_resident_memory_bytes", cpu] == 30_000_000  # live processes only


def test_no_process_series_without_a_reader() -> None:
    g = Gatherer()
    g.started(101, 1, 0)
    assert "process_" not in g.render()


def test_account_results_and_refusals_by_reason() -> None:
    counters = Counters()
    for action, code in [("register", 0), ("register", 1), ("login", 1), ("login", 1),
                         ("login", 4), ("register", 4), ("login", 9)]:  # fmt: skip
        counters.account_result(action, code)
    counters.refused = 3
    counters.proxy_refused = 2
    counters.network_refused = 5
    counters.kicks["login_timeout"] = 4
    from trioserver.nursery_pool import PoolStatistics

    report = counters.snapshot(
        PoolStatistics(100, 0, 0, 100, 0, 0), 0, 1024,
        inbox_packets=0, outbox_replies=0, outbox_bytes=0,
    )  # fmt: skip
    assert WorkerStatistics.from_json(report.to_json()) == report
    g = Gatherer()
    g.started(101, 1, 0)
    g.report(101, report.to_json())
    text = g.render()
    assert total(text, "trioserver_account_results_total", action="login", result="rejected") == 2
    assert total(text, "trioserver_account_results_total", action="register", result="ok") == 1
    assert total(text, "trioserver_account_results_total", action="login", result="code_9") == 1
    assert total(text, "trioserver_account_results_total", result="invalid_input") == 0  # shown
    assert total(text, "trioserver_refusals_total", reason="pool_full") == 3
    assert total(text, "trioserver_refusals_total", reason="proxy") == 2
    assert total(text, "trioserver_refusals_total", reason="rate_limited") == 2
    assert total(text, "trioserver_refusals_total", reason="network_cap") == 5
    assert total(text, "trioserver_network_refused_total") == 5
    assert total(text, "trioserver_refusals_total", reason="login_timeout") == 4
    (worker,) = json.loads(g.status_json(health="serving", master_pid=1))["workers"]
    assert worker["refusals"] == 16
    assert worker["refusals_by_reason"] == {
        "pool_full": 3,
        "proxy": 2,
        "network_cap": 5,
        "login_timeout": 4,
        "rate_limited": 2,
    }
    assert worker["account_results"]["login"] == {
        "ok": 0, "rejected": 2, "invalid_input": 0, "server_unavailable": 0, "rate_limited": 1,
        "busy": 0, "code_9": 1,
    }  # fmt: skip


def test_tls_counters_reach_the_page_and_survive_the_pipe() -> None:
    counters = Counters()
    counters.tls_handshakes = 4
    counters.tls_failures["not_tls"] = 2
    from trioserver.nursery_pool import PoolStatistics

    report = counters.snapshot(
        PoolStatistics(100, 0, 0, 100, 0, 0), 0, 1024, inbox_packets=0, outbox_replies=0,
        outbox_bytes=0,
    )  # fmt: skip
    assert WorkerStatistics.from_json(report.to_json()) == report
    g = Gatherer()
    g.started(101, 1, 0)
    g.report(101, report.to_json())
    text = g.render()
    assert total(text, "trioserver_tls_handshakes_total") == 4
    assert total(text, "trioserver_tls_failures_total", reason="not_tls") == 2
    assert total(text, "trioserver_tls_failures_total", reason="timeout") == 0


def test_handoff_counts_reach_the_metrics_page() -> None:
    counters = Counters()
    counters.handoff_moved, counters.handoff_adopted = 7, 3
    counters.handoff_refused, counters.handoff_failed = 2, 1
    counters.handoff_kept.update({"tls": 4, "http": 5})
    from trioserver.nursery_pool import PoolStatistics

    report = counters.snapshot(
        PoolStatistics(100, 0, 0, 100, 0, 0), 0, 1024,
        inbox_packets=0, outbox_replies=0, outbox_bytes=0,
    )  # fmt: skip
    assert WorkerStatistics.from_json(report.to_json()) == report
    g = Gatherer()
    g.started(101, 1, 0)
    g.report(101, report.to_json())
    text = g.render()
    assert total(text, "trioserver_handoff_moved_total") == 7
    assert total(text, "trioserver_handoff_adopted_total") == 3
    assert total(text, "trioserver_handoff_refused_total") == 2
    assert total(text, "trioserver_handoff_failed_total") == 1
    assert total(text, "trioserver_handoff_kept_total", reason="tls") == 4
    assert total(text, "trioserver_handoff_kept_total", reason="http") == 5
    assert total(text, "trioserver_handoff_kept_total", reason="refused") == 0  # shown
