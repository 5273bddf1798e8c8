"""Benchmark results as pictures: one PNG per table of per-CPU-second ratios.

    python benchmarks/charts.py benchmarks/results/20261130-065310.json   # PNGs beside it
    python benchmarks/charts.py results/tls-*.json results/websocket-*.json --out-dir /tmp

Reads a results file of ``run.py`` (its ratio tables: binary protocol, 2 workers
against 1, HTTP) or of ``tls_bench.py`` / ``websocket_bench.py`` (one table each) and
draws, per table, a horizontal bar per case and ratio: requests per server CPU-second
of one target over another's, medians of the runs, as the printed tables compute them.
A line at 1.0 (as fast as the baseline per CPU-second) and, where benchmarks/README.md
sets one, a mark at the case's goal. The per-CPU-second ratio is the figure the goals
are set in, because it holds up on a shared machine where req/s does not.

``run.py`` calls :func:`write_charts` after a run and for ``--report FILE --charts``.
matplotlib is a benchmark-only dependency (``pip install -e '.[bench]'``); it is
imported only when a chart is drawn, so the rest of the suite runs without it.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as suite  # the suite's cases, their ratios and its summaries

#: The goals of benchmarks/README.md that are a ratio per server CPU-second, by
#: (case, numerator, denominator). The 2-workers goal (2 workers >= 1.7x one, each with
#: a core) is checked through the projection 2 x the per CPU-s ratio, so its mark is 0.85.
GOALS: Mapping[tuple[str, str, str], tuple[float, str]] = {
    ("ping-100x16", "trioserver", "bare-trio"): (0.7, "goal 0.7"),
    ("ping-100x1", "trioserver", "bare-trio"): (0.9, "goal 0.9"),
    ("register-100x16", "trioserver", "bare-trio"): (0.3, "goal 0.3"),
    ("login-100x16", "trioserver", "bare-trio"): (0.3, "goal 0.3"),
    ("ping-100x16-2workers", "trioserver-2w", "trioserver-1w"): (
        0.85,
        "goal 0.85 (1.7x projected)",
    ),
    ("http-keepalive", "trioserver-http", "nginx"): (1.0, "goal 1.0"),
    ("http-close", "trioserver-http", "nginx"): (0.8, "goal 0.8"),
    ("http-1mib", "trioserver-http", "nginx"): (0.8, "goal 0.8"),
    ("http10-1k", "trioserver-http", "nginx"): (0.8, "goal 0.8"),
    ("http10-8k", "trioserver-http", "nginx"): (0.8, "goal 0.8"),
    ("tls-ping-100x16", "trioserver-tls", "bare-trio-tls"): (0.8, "goal 0.8"),
    ("tls-ping-100x1", "trioserver-tls", "bare-trio-tls"): (0.8, "goal 0.8"),
    ("ws-ping-100x16", "trioserver-ws", "bare-trio-ws"): (0.8, "goal 0.8"),
    ("ws-ping-100x1", "trioserver-ws", "bare-trio-ws"): (0.8, "goal 0.8"),
}

#: The ratios tls_bench.py and websocket_bench.py print (their tables' "vs" columns).
OWN_RUNNER_RATIOS: tuple[tuple[str, str], ...] = (
    ("trioserver-tls", "bare-trio-tls"),
    ("trioserver", "bare-trio-tls"),
    ("trioserver-tls", "trioserver"),
    ("trioserver-ws", "bare-trio-ws"),
    ("trioserver-ws", "trioserver-tcp"),
)

TABLE_TITLES = {
    "load": "Binary protocol, one worker",
    "workers": "2 workers against 1 (nothing pinned)",
    "http": "HTTP, one worker",
    "tls": "TLS, one worker",
    "websocket": "WebSocket, one worker",
}


@dataclass(frozen=True)
class Bar:
    numerator: str
    denominator: str
    ratio: float

    @property
    def label(self) -> str:
        return f"{self.numerator} / {self.denominator}"


@dataclass(frozen=True)
class Group:
    """One case: its bars, and the goal of one of them where the README sets one."""

    case: str
    bars: tuple[Bar, ...]
    goal: float | None = None
    goal_label: str = ""


@dataclass(frozen=True)
class Chart:
    name: str  # the table: load, workers, http, tls, websocket
    title: str
    caption: str
    groups: tuple[Group, ...]


def group(case: str, bars: Sequence[Bar]) -> Group:
    for b in bars:
        goal = GOALS.get((case, b.numerator, b.denominator))
        if goal:
            return Group(case, tuple(bars), goal[0], goal[1])
    return Group(case, tuple(bars))


def suite_charts(doc: Mapping[str, Any]) -> list[Chart]:
    """The ratio tables of a run.py result, as ``run.py --report`` prints them."""
    targets = list(doc["targets"])
    if any(name in targets for name, _ in suite.BEFORE_TARGETS.values()):
        suite.add_before_target(None)  # a run with --before: its before/after ratios too
    summary = suite.summarise_runs(doc["runs"])
    charts = []
    for kind in ("load", "workers", "http"):
        cases = [c for c in suite.CASES if c.kind == kind and c.name in summary]
        if not cases:
            continue
        shown = [t for t in dict.fromkeys(t for c in cases for t in c.targets) if t in targets]
        ratios = dict.fromkeys(r for c in cases for r in c.ratios)
        pairs = [(a, b) for a, b in ratios if a in shown and b in shown]
        groups = []
        for c in cases:
            s = summary[c.name]
            bars = []
            for a, b in pairs:
                ca = s.get(a, {}).get("server_us_per_req")
                cb = s.get(b, {}).get("server_us_per_req")
                if ca and cb:
                    bars.append(Bar(a, b, cb / ca))
            if bars:
                groups.append(group(c.name, bars))
        if groups:
            charts.append(Chart(kind, TABLE_TITLES[kind], suite_caption(doc), tuple(groups)))
    return charts


def suite_caption(doc: Mapping[str, Any]) -> str:
    m = doc.get("machine", {})
    s = doc.get("settings", {})
    started = doc.get("started", "")
    when = f"{started[:4]}-{started[4:6]}-{started[6:8]} {started[9:11]}:{started[11:13]} UTC"
    git = (str(m.get("git") or "").split() or ["?"])[0]  # "" from a tree outside git
    return (
        f"run {when}, commit {git}; {m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, "
        f"kernel {m.get('kernel', '?')}, Python {m.get('python', '?')}; "
        f"medians of {s.get('runs', '?')} run(s) x {s.get('duration', '?')} s"
    )


def own_runner_charts(doc: Mapping[str, Any], stem: str) -> list[Chart]:
    """The table of a tls_bench.py / websocket_bench.py result (``{"results": ...}``)."""
    results: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]] = doc["results"]

    def med(case: str, target: str) -> float | None:
        values = [r["per_cpu_s"] for r in results[case].get(target, []) if r.get("per_cpu_s")]
        return statistics.median(values) if values else None

    groups = []
    runs = 0
    for case in results:
        bars = []
        for a, b in OWN_RUNNER_RATIOS:
            pa, pb = med(case, a), med(case, b)
            if pa and pb:
                bars.append(Bar(a, b, pa / pb))
                runs = max(runs, len(results[case][a]))
        if bars:
            groups.append(group(case, bars))
    if not groups:
        return []
    name = "tls" if any(c.startswith("tls-") for c in results) else "websocket"
    # "20261202-071003" in "tls-20261202-071003"
    stamp = stem.rsplit("-", 2)[-2:]
    when = (
        f"{stamp[0][:4]}-{stamp[0][4:6]}-{stamp[0][6:8]} {stamp[1][:2]}:{stamp[1][2:4]} UTC"
        if len(stamp) == 2 and stamp[0].isdigit() and len(stamp[0]) == 8
        else "?"
    )
    m = doc.get("machine")
    machine = (
        f"{m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, kernel {m.get('kernel', '?')}, "
        f"Python {m.get('python', '?')}"
        if m
        else "machine not recorded in the file (a 2-vCPU shared VM, see benchmarks/README.md)"
    )
    git = str(doc.get("git", "?")).split()[0]
    caption = f"run {when}, commit {git}; {machine}; medians of {runs} run(s)"
    return [Chart(name, TABLE_TITLES[name], caption, tuple(groups))]


def charts_from(doc: Mapping[str, Any], stem: str = "") -> list[Chart]:
    """Every ratio table of a results file, whichever runner wrote it."""
    if "runs" in doc:
        return suite_charts(doc)
    if "results" in doc:
        return own_runner_charts(doc, stem)
    raise ValueError("not a benchmark results file (no 'runs' and no 'results')")


# ---------------------------------------------------------------------------
# Drawing.

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b")
GOAL_COLOUR = "#d62728"
BAR_H = 0.8  # of one row
GAP = 0.7  # rows between cases


def png(chart: Chart) -> bytes:
    """The chart as PNG bytes (matplotlib's Agg canvas; no display, no pyplot state)."""
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(b.label for g in chart.groups for b in g.bars))
    colour = {label: COLOURS[i % len(COLOURS)] for i, label in enumerate(labels)}
    rows = sum(len(g.bars) for g in chart.groups) + GAP * (len(chart.groups) - 1)
    height = 2.4 + 0.3 * rows  # inches: title, axis, legend and caption, then the bars
    fig = Figure(figsize=(8.0, height), dpi=100)
    ax = fig.add_subplot()
    ticks, names = [], []
    y = 0.0
    top = max(
        [b.ratio for g in chart.groups for b in g.bars]
        + [g.goal for g in chart.groups if g.goal]
        + [1.0]
    )
    for g in chart.groups:
        first = y
        for b in g.bars:
            ax.barh(y, b.ratio, height=BAR_H, color=colour[b.label])
            end = b.ratio
            if g.goal is not None and (g.case, b.numerator, b.denominator) in GOALS:
                # over the bar the goal is about only, a little taller than it
                ax.vlines(g.goal, y - 0.6, y + 0.6, colors=GOAL_COLOUR, linewidth=2, zorder=4)
                if b.ratio < g.goal < b.ratio + 0.08 * top:  # the label would cross it
                    end = g.goal
            ax.text(
                end + top * 0.01,
                y,
                f"{b.ratio:.2f}",
                va="center",
                fontsize=8,
                zorder=5,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5},
            )
            y += 1
        ticks.append((first + y - 1) / 2)
        names.append(f"{g.case}\n{g.goal_label}" if g.goal is not None else g.case)
        y += GAP
    ax.axvline(1.0, color="black", linewidth=1, zorder=3)
    ax.set_yticks(ticks, names)
    ax.set_ylim(y - GAP - 0.2, -0.8)  # top to bottom, in the tables' order
    ax.set_xlim(0, top * 1.15)
    ax.set_xlabel("ratio of requests per server CPU-second (1.0 = as fast as the baseline)")
    ax.grid(axis="x", color="#dddddd", linewidth=0.5)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    handles = [ax.bar(0, 0, color=colour[label], label=label) for label in labels]
    if any(g.goal is not None for g in chart.groups):
        handles.append(ax.plot([], [], color=GOAL_COLOUR, linewidth=2, label="goal (README)")[0])
    below = 0.5 / height  # the legend and the caption, under the axis
    fig.legend(
        handles=handles,
        fontsize=8,
        loc="lower center",
        ncol=min(len(handles), 3),
        bbox_to_anchor=(0.5, 0.15 / height),
        frameon=False,
    )
    ax.set_title(f"{chart.title}: ratios per server CPU-second", fontsize=11)
    fig.text(0.01, 0.05 / height, chart.caption, fontsize=7, color="#444444")
    fig.tight_layout(rect=(0, below, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return shrink(buf.getvalue())


def shrink(data: bytes) -> bytes:
    """A palette PNG of the same picture: a few flat colours need no 24-bit pixels, and
    the committed charts stay a few tens of KB. Unchanged without Pillow."""
    try:
        from PIL import Image
    except ImportError:
        return data
    img = Image.open(io.BytesIO(data)).convert("RGB").quantize(colors=64)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue() if out.tell() < len(data) else data


def write_charts(results: Path, out_dir: Path | None = None) -> list[Path]:
    """Draw every ratio table of `results` into ``<stem>-<table>.png`` beside it (or in
    `out_dir`); return the files written."""
    import json

    doc = json.loads(results.read_text())
    written = []
    for chart in charts_from(doc, results.stem):
        path = (out_dir or results.parent) / f"{results.stem}-{chart.name}.png"
        path.write_bytes(png(chart))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="results JSON files")
    ap.add_argument("--out-dir", type=Path, help="where to write (default: beside each file)")
    args = ap.parse_args(argv)
    for results in args.results:
        written = write_charts(results, args.out_dir)
        for path in written:
            print(f"wrote {path} ({path.stat().st_size:,} bytes)")
        if not written:  # idle cases only, say: their table is of memory, not rates
            print(f"{results}: no table of per-CPU-second ratios, nothing drawn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
