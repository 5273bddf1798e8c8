"""The login budget with a real master and two worker processes over one SQLite file:
the configured one, not one per worker."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_app import PID
from real_server import Server

from trioserver.client import BlockingClient
from trioserver.messages import ResultCode

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

ARGS = [
    "--listen", "127.0.0.1:0", "--workers", "2", "--app", "hub_app:router",
    "--set", 'accounts.hash="insecure-fast"',
    "--set", "accounts.max_failures_per_name=5",
    "--set", "connection.flood_check=false",
]  # fmt: skip


@pytest.fixture(params=[True, False], ids=["shared", "per-worker"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Server, bool]]:
    shared: bool = request.param
    server = Server(tmp_path, [*ARGS, "--set", f"accounts.shared_limits={str(shared).lower()}"])
    try:
        yield server.start(), shared
    finally:
        server.kill_all()


def attempt(port: int) -> tuple[int, int]:
    """One fresh connection, one wrong guess for alice: (the worker's pid, the result)."""
    with BlockingClient.connect("127.0.0.1", port) as client:
        pid = int(client.request(PID).body)
        return pid, client.login("alice", "wrong").result


def test_two_workers_allow_the_configured_budget(server: tuple[Server, bool]) -> None:
    """Guesses on fresh connections (the kernel spreads them over both workers) until
    each worker has had at least 6: shared, 5 are answered and the rest refused; with
    each worker counting its own (the setting off), 10 are answered."""
    server_, shared = server
    port = server_.wait_ready(2)
    with BlockingClient.connect("127.0.0.1", port) as client:
        assert client.register("alice", "secret").result == ResultCode.OK
    results = []
    per_worker: Counter[int] = Counter()
    for _ in range(400):
        pid, result = attempt(port)
        results.append(result)
        per_worker[pid] += 1
        if len(per_worker) == 2 and min(per_worker.values()) >= 6:
            break
    assert len(per_worker) == 2 and min(per_worker.values()) >= 6, per_worker
    budget = 5 if shared else 10
    assert results.count(ResultCode.REJECTED) == budget, results
    assert set(results) == {ResultCode.REJECTED, ResultCode.RATE_LIMITED}
    if shared:
        assert results[:5] == [ResultCode.REJECTED] * 5
