"""Log lines about misbehaving connections, within a budget: a few in full, the rest counted.

::

    budget = LogBudget(log, lines=10, interval=10.0)
    budget.line("bad_crc", "dropped from %s: %s", peer, why)   # in full, or counted
    nursery.start_soon(budget.run)      # the summary line at each interval's end

A line per dropped packet kind or closed connection is what an operator wants
from a few bad clients and what an attacker wants from many: a garbage flood
opening thousands of connections a second wrote as many lines (2.7 GB an hour
at ``info``). So in each interval of ``interval`` seconds the first ``lines``
lines are written as they come, and the rest are only counted by reason; when
the interval ends one line sums them up::

    suppressed 11,234 connection lines in 10 s: bad_crc 10,000, flood 1,234

Intervals are aligned to multiples of ``interval`` on the clock (trio's, in a
worker), so :meth:`run` only sleeps until the next boundary, and a test with
``autojump_clock`` knows to the instant when the summary comes. Without
:meth:`run`, the summary comes with the next line of a later interval or at
:meth:`flush`. ``interval`` 0 writes every line (no budget).
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable

import trio

__all__ = ["LogBudget", "current_time"]


def current_time() -> float:
    """trio's clock inside a run (virtual under ``autojump_clock``), else the monotonic one."""
    try:
        return trio.current_time()
    except RuntimeError:
        return time.monotonic()


class LogBudget:
    """At most ``lines`` lines in full per ``interval`` seconds; the rest counted by reason."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        lines: int,
        interval: float,
        clock: Callable[[], float] = current_time,
    ) -> None:
        if lines < 0:
            raise ValueError(f"lines must be 0 or more, not {lines!r}")
        if interval < 0:
            raise ValueError(f"interval must be 0 or more, not {interval!r}")
        self.logger = logger
        self.lines = lines
        self.interval = interval
        self.clock = clock
        self._window: int | None = None
        self._used = 0
        self._suppressed: collections.Counter[str] = collections.Counter()

    def line(self, reason: str, message: str, *args: object) -> None:
        """Log ``message % args`` at info if the budget allows, else count it under ``reason``."""
        if self.interval <= 0:
            self.logger.info(message, *args)
            return
        self._roll(self.clock())
        if self._used < self.lines:
            self._used += 1
            self.logger.info(message, *args)
        else:
            self._suppressed[reason] += 1

    @property
    def suppressed(self) -> dict[str, int]:
        """Lines counted, not written, in the current interval, by reason."""
        return dict(self._suppressed)

    def flush(self) -> None:
        """Write the summary of the lines suppressed so far, if any."""
        if not self._suppressed:
            return
        total = sum(self._suppressed.values())
        parts = ", ".join(f"{reason} {count:,}" for reason, count in self._suppressed.most_common())
        self._suppressed.clear()
        self.logger.info(
            "suppressed %s connection lines in %g s: %s "
            "(logging.connection_lines per logging.connection_lines_interval)",
            f"{total:,}",
            self.interval,
            parts,
        )

    async def run(self) -> None:
        """Write each interval's summary when it ends; the last one when cancelled."""
        if self.interval <= 0:
            await trio.sleep_forever()
        try:
            window = math.floor(self.clock() / self.interval)
            while True:
                window += 1
                await trio.sleep_until(window * self.interval)
                self._enter(window)
        finally:
            self.flush()

    def _roll(self, now: float) -> None:
        window = math.floor(now / self.interval)
        if self._window is None or window > self._window:  # never back: float rounding
            self._enter(window)

    def _enter(self, window: int) -> None:
        if window != self._window:
            self.flush()
            self._window = window
            self._used = 0
