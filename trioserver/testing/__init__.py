"""Run a real worker in simulation: in memory, in virtual time, with faults and bot swarms.

::

    async def test_echo(autojump_clock):
        async with serve_in_memory(memory_config(), router) as server:
            client = await server.connect(faults=[Split((1,)), Delay(0.05)])
            assert await client.ping() == 0.1     # virtual time: the delay, both ways

- :func:`serve_in_memory` starts the real ``Worker`` on a :class:`MemoryListener`.
- Faults are data (:class:`Split`, :class:`RandomSplit`, :class:`Delay`,
  :class:`StopReading`, :class:`Reset`, :class:`HalfClose`); a :class:`FaultPlan`
  gives many connections theirs from one seed.
- :func:`run_swarm` runs N bots, each a script of yours, and reports what each saw.
- ``trioserver.testing.plugin`` (a pytest plugin, loaded once trioserver is
  installed) provides the ``trioserver_*`` fixtures.
"""

from __future__ import annotations

from ._faults import (
    Delay,
    Direction,
    Fault,
    FaultPlan,
    FaultRates,
    HalfClose,
    RandomSplit,
    Reset,
    Split,
    StopReading,
)
from ._listener import MemoryListener
from ._network import LinkEnd, open_link
from ._server import InMemoryServer, memory_config, serve_in_memory
from ._swarm import Bot, BotEvent, BotReport, Outcome, Script, SwarmReport, run_swarm

__all__ = [
    "Bot",
    "BotEvent",
    "BotReport",
    "Delay",
    "Direction",
    "Fault",
    "FaultPlan",
    "FaultRates",
    "HalfClose",
    "InMemoryServer",
    "LinkEnd",
    "MemoryListener",
    "Outcome",
    "RandomSplit",
    "Reset",
    "Script",
    "Split",
    "StopReading",
    "SwarmReport",
    "memory_config",
    "open_link",
    "run_swarm",
    "serve_in_memory",
]
