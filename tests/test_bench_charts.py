"""benchmarks/charts.py turns a results file into one PNG per table of per-CPU-second ratios.

Fixtures are tiny results files of the two shapes the runners write (run.py's, and
tls_bench.py's / websocket_bench.py's); nothing is measured here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def charts() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        import charts as module
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.fixture
def matplotlib_installed() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but matplotlib is not installed: pip install -e '.[test]'")
        pytest.skip("matplotlib is not installed (pip install -e '.[bench]')")


def run(case: str, target: str, us_per_req: float) -> dict[str, Any]:
    return {"case": case, "target": target, "rps": 1000.0, "server_us_per_req": us_per_req}


SUITE_DOC: dict[str, Any] = {
    "started": "20261130-065310",
    "machine": {"cpu_model": "Test CPU", "cores": 2, "kernel": "6.1", "python": "3.11.7"},
    "settings": {"runs": 2, "duration": 10.0},
    "targets": {"bare-trio": {}, "uvloop": {}, "trioserver": {}},
    "notes": {},
    "runs": [
        run("ping-100x16", "bare-trio", 5.0),
        run("ping-100x16", "bare-trio", 5.0),
        run("ping-100x16", "uvloop", 2.0),
        run("ping-100x16", "trioserver", 8.0),
        run("ping-100x16", "trioserver", 12.0),  # median 10 µs: half bare trio's rate
        run("ping-1x1", "bare-trio", 100.0),
        run("ping-1x1", "trioserver", 125.0),
    ],
}

WS_DOC: dict[str, Any] = {
    "git": "2c670c3 a commit",
    "results": {
        "ws-ping-100x16": {
            "bare-trio-ws": [{"per_cpu_s": 50_000.0}, {"per_cpu_s": 70_000.0}],
            "trioserver-ws": [{"per_cpu_s": 120_000.0}],
            "trioserver-tcp": [{"per_cpu_s": 240_000.0}],
        }
    },
}


def test_run_py_results_give_the_ratio_table_with_its_goals(charts: ModuleType) -> None:
    (chart,) = charts.charts_from(SUITE_DOC)
    assert chart.name == "load"
    assert [g.case for g in chart.groups] == ["ping-1x1", "ping-100x16"]  # the table's order
    ping = chart.groups[1]
    assert [(b.label, b.ratio) for b in ping.bars] == [
        ("trioserver / bare-trio", 0.5),
        ("trioserver / uvloop", 0.2),
        ("bare-trio / uvloop", 0.4),
    ]
    assert ping.goal == 0.7
    assert chart.groups[0].goal is None  # ping 1x1's goal is a latency, not a rate
    assert [b.ratio for b in chart.groups[0].bars] == [0.8]  # uvloop did not run it
    assert "2026-11-30 06:53 UTC" in chart.caption and "Test CPU, 2 cores" in chart.caption


def test_own_runner_results_give_ratios_of_median_per_cpu_second(charts: ModuleType) -> None:
    (chart,) = charts.charts_from(WS_DOC, "websocket-20261202-140409")
    assert chart.name == "websocket"
    (group,) = chart.groups
    assert [(b.label, b.ratio) for b in group.bars] == [
        ("trioserver-ws / bare-trio-ws", 2.0),
        ("trioserver-ws / trioserver-tcp", 0.5),
    ]
    assert group.goal == 0.8
    assert "2026-12-02 14:04 UTC" in chart.caption and "2c670c3" in chart.caption


def test_not_a_results_file_is_refused(charts: ModuleType) -> None:
    with pytest.raises(ValueError, match="not a benchmark results file"):
        charts.charts_from({"something": 1})


@pytest.mark.usefixtures("matplotlib_installed")
@pytest.mark.parametrize(("doc", "stem"), [(SUITE_DOC, "20261130-065310"), (WS_DOC, "websocket-1")])
def test_a_results_file_becomes_a_png_per_table(
    charts: ModuleType, tmp_path: Path, doc: dict[str, Any], stem: str
) -> None:
    results = tmp_path / f"{stem}.json"
    results.write_text(json.dumps(doc))
    (png,) = charts.write_charts(results)
    assert png.parent == tmp_path and png.name.startswith(stem)
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert 2_000 < len(data) < 100_000
