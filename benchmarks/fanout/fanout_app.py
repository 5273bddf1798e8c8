"""The fan-out benchmark's trioserver application: every connection joins one group on
connect; an application task publishes to it at a steady rate.

    PYTHONPATH=benchmarks/fanout FANOUT_RATE=10 python -m trioserver --no-master --app fanout_app:router ...

Only worker 1 (or the only worker) publishes, and only with ``FANOUT_PUBLISH`` unset
or 1: with several workers or instances, the others deliver what reaches them.
Each push's body: the publish time (``time.monotonic_ns()``, u64), a sequence number
(u32) and padding to ``FANOUT_BODY`` bytes (default 32).
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

import trio

import trioserver
from trioserver import Context

GROUP = "all"
PUSH = 200
STAMP = struct.Struct(">QI")


def router() -> trioserver.Router:
    rate = float(os.environ.get("FANOUT_RATE", "10"))
    size = int(os.environ.get("FANOUT_BODY", "32"))
    pad = b"\0" * max(0, size - STAMP.size)
    app = trioserver.default_router()

    @app.on_connect
    def join(ctx: Context) -> None:
        ctx.join(GROUP)

    @app.on_worker_start
    async def broadcast(worker: Any) -> None:
        if worker.index > 1 or os.environ.get("FANOUT_PUBLISH", "1") != "1":
            return  # one publisher: worker 1 (or the only one) of the instance that publishes
        hub = worker.hub
        interval = 1 / rate
        deadline = trio.current_time()
        sequence = 0
        while True:
            deadline += interval
            await trio.sleep_until(deadline)
            sequence += 1
            hub.publish(GROUP, PUSH, STAMP.pack(time.monotonic_ns(), sequence) + pad)

    return app
