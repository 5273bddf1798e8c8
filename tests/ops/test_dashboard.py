"""The admin listener's dashboard in headless Chromium, against a real master with 2 workers.

The page loads, its five charts draw a line per worker and one for all, and its numbers
follow the server under load: open connections, requests per second, a kick and
refusals (the pool holds 4 connections per worker here; 12 clients are more than 8).
A screenshot is kept under the test's tmp directory; its path is printed.

Chromium is Debian's (``.ci/run`` installs it), driven over the DevTools protocol by
Playwright's Python package; no browser is downloaded.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trioserver.client import BlockingClient

from ..browser import chromium
from ..processes import free_port, running_server

CHARTS = ("connections", "requests", "lag", "kicks", "refusals")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A master with 2 workers of 4 connections each; (binary port, admin port)."""
    port, admin = free_port(), free_port()
    args = [
        "--listen", f"127.0.0.1:{port}", "--set", "http.listen=[]",
        "--set", 'accounts.url="memory:"', "--set", "server.max_connections=4",
        "--set", "connection.flood_check=false",
        "--set", f'metrics.listen="127.0.0.1:{admin}"', "--set", "metrics.interval=0.1",
    ]  # fmt: skip
    with running_server(tmp_path, args, workers=2):
        yield port, admin


def cell(page: Any, worker: str, key: str) -> str:
    text: str = page.inner_text(f'#workers tr[data-worker="{worker}"] td[data-key="{key}"]')
    return text


def number(text: str) -> float:
    return float(text.split()[0]) if text not in ("", "–") else float("nan")


def test_the_dashboard_draws_and_follows_the_server(
    server: tuple[int, int], tmp_path: Path
) -> None:
    port, admin = server
    with chromium(tmp_path / "chromium-profile") as browser:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(f"http://127.0.0.1:{admin}/")
        page.wait_for_function("Number(document.body.dataset.polls) >= 3", timeout=15_000)

        # Loaded and drawn: five charts, each a line for each worker and one for all.
        assert page.inner_text("#health") == "serving"
        for chart in CHARTS:
            drawn = page.eval_on_selector_all(
                f"#chart-{chart} polyline", "lines => lines.map(l => l.dataset.series)"
            )
            assert sorted(drawn) == ["1", "2", "all"], (chart, drawn)
            assert int(page.get_attribute(f"#chart-{chart}", "data-points") or 0) >= 1
        assert cell(page, "all", "open") == "0"
        assert cell(page, "all", "kicks") == "0"
        assert number(cell(page, "all", "requests")) == 0

        # Load: one bad packet (a kick), then 12 clients for a pool of 8, pings on
        # those the server kept.
        with socket.create_connection(("127.0.0.1", port)) as bad:
            bad.sendall(b"\x00\x02\x00\x00\x00\x00\x00\x00")  # pkgLen 2: kicked
            assert bad.recv(1) == b""
        clients = [BlockingClient.connect("127.0.0.1", port) for _ in range(12)]
        stop = threading.Event()
        pinged = [0]

        def load() -> None:
            deadline = time.monotonic() + 30  # bounded, whatever happens
            while not stop.is_set() and time.monotonic() < deadline:
                for client in kept:
                    with contextlib.suppress(OSError, ConnectionError):
                        client.ping()
                        pinged[0] += 1

        try:
            kept = [c for c in clients if _alive(c)]
            thread = threading.Thread(target=load, daemon=True)
            thread.start()
            page.wait_for_function(
                """() => {
                    const get = key => document.querySelector(
                        `#workers tr[data-worker="all"] td[data-key="${key}"]`).textContent;
                    return parseFloat(get("requests")) > 0 && get("kicks") === "1"
                        && Number(get("refusals")) >= 4 && Number(get("open")) > 0;
                }""",
                timeout=20_000,
            )
            assert number(cell(page, "all", "open")) == len(kept)
            assert number(cell(page, "all", "refusals")) == 12 - len(kept)
            assert page.inner_text("#now-requests") not in ("–", "0")
            screenshot = tmp_path / "dashboard.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"dashboard screenshot: {screenshot}")
        finally:
            stop.set()
            for client in clients:
                client.close()
        assert pinged[0] > 0
        assert screenshot.stat().st_size > 10_000
        assert errors == []
        # Nothing but the admin listener was asked for: no external asset.
        assert all(url.startswith(f"http://127.0.0.1:{admin}/") for url in requests)


def _alive(client: BlockingClient) -> bool:
    """Whether the server kept this connection (a refused one is closed at once)."""
    try:
        client.ping()
    except (OSError, ConnectionError):
        return False
    return True
