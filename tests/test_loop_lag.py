"""The event-loop lag probe: a timer whose lateness is the lag, in exact virtual time."""

from __future__ import annotations

import trio
import trio.testing

from trioserver.stats import Counters, watch_loop_lag


async def test_the_lag_probe_reads_how_late_it_woke(autojump_clock: trio.testing.MockClock) -> None:
    counters = Counters()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_loop_lag, counters, 0.25)
        await trio.sleep(0.1)
        autojump_clock.jump(0.4)  # the loop was stuck: the probe due at 0.25 wakes at 0.5
        await trio.sleep(0.6)  # two more probes, on time (at 0.75 and 1.0; no tie)
        nursery.cancel_scope.cancel()
    assert list(counters.recent_lag) == [0.25, 0.0, 0.0]
    assert counters.loop_lag.snapshot().count == 3
