"""Lines about misbehaving connections: a few in full per interval, the rest summed."""

from __future__ import annotations

import logging
import struct

import pytest
import trio
import trio.testing

from trioserver.log_budget import LogBudget
from trioserver.testing import serve_in_memory


class Lines(logging.Handler):
    """Every record's message and the trio time it was written at."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((trio.current_time(), record.getMessage()))


@pytest.fixture
def lines() -> Lines:
    handler = Lines()
    logger = logging.getLogger("test.log_budget")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield handler  # type: ignore[misc]
    logger.removeHandler(handler)


async def test_a_few_in_full_then_one_summary_at_the_interval_end(
    autojump_clock: trio.testing.MockClock, lines: Lines
) -> None:
    budget = LogBudget(logging.getLogger("test.log_budget"), lines=3, interval=10.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(budget.run)
        await trio.sleep(1.0)
        for i in range(3 + 10_000 + 1_234):
            reason = "bad_crc" if 3 <= i < 10_003 else "flood"
            budget.line(reason, "line %d", i)
        assert [text for _, text in lines.seen] == ["line 0", "line 1", "line 2"]
        assert budget.suppressed == {"bad_crc": 10_000, "flood": 1_234}
        await trio.sleep(9.5)
        budget.line("flood", "in the next interval")  # a new budget from 10.0 s
        nursery.cancel_scope.cancel()
    assert lines.seen[3:] == [
        (10.0, "suppressed 11,234 connection lines in 10 s: bad_crc 10,000, flood 1,234 "
         "(logging.connection_lines per logging.connection_lines_interval)"),
        (10.5, "in the next interval"),
    ]  # fmt: skip


async def test_without_the_task_the_next_interval_writes_the_summary(
    autojump_clock: trio.testing.MockClock, lines: Lines
) -> None:
    budget = LogBudget(logging.getLogger("test.log_budget"), lines=1, interval=5.0)
    budget.line("a", "first")
    budget.line("a", "second")
    await trio.sleep(12.0)
    budget.line("b", "third")
    assert [text.split(":")[0] for _, text in lines.seen] == [
        "first",
        "suppressed 1 connection lines in 5 s",
        "third",
    ]


async def test_interval_zero_writes_every_line(lines: Lines) -> None:
    budget = LogBudget(logging.getLogger("test.log_budget"), lines=0, interval=0.0)
    for i in range(50):
        budget.line("flood", "line %d", i)
    assert len(lines.seen) == 50


def bad_length_header() -> bytes:
    return struct.pack(">HHI", 3, 0, 0)  # pkgLen below the header size: closed at once


async def test_a_garbage_flood_writes_ten_lines_and_a_count(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioserver")
    async with serve_in_memory() as server, trio.open_nursery() as nursery:
        start = trio.current_time()
        for _ in range(200):
            client = await server.connect()
            await client.send_raw(bad_length_header())
            assert await client.at_eof()
        assert trio.current_time() - start < 10.0  # all within one interval
        closed = [r for r in caplog.records if r.getMessage().startswith("closed ")]
        assert len(closed) == 10
        nursery.start_soon(server.worker.counters.connection_log.run)  # as a worker process does
        await trio.sleep_until(10.0)
        await trio.sleep(0)
        summary = [r.getMessage() for r in caplog.records if "suppressed" in r.getMessage()]
        assert summary == [
            "suppressed 190 connection lines in 10 s: bad_length 190 "
            "(logging.connection_lines per logging.connection_lines_interval)"
        ]
        nursery.cancel_scope.cancel()
    assert server.worker.statistics().kicks_by_reason == {"bad_length": 200}
