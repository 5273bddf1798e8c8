"""Applications the real-process tests serve (``--app sample_apps:...``, on PYTHONPATH)."""

from __future__ import annotations

import os
import sys
import time

import trio

from trioserver.dispatch import Router
from trioserver.framer import Packet
from trioserver.handlers import Context, default_router

#: Reply: "<worker pid> <server.max_connections>": who answered, and on which config.
WHO = 100
#: Like WHO, after 10 ms of (async) work: keeps pipelined requests in flight.
SLOW_WHO = 101
#: Blocks the worker's event loop for good: its heartbeat stops.
BLOCK = 102


def _who(ctx: Context) -> bytes:
    return f"{os.getpid()} {ctx.services.config.server.max_connections}".encode()


def who_router() -> Router:
    router = default_router()

    def who(ctx: Context, packet: Packet) -> None:
        ctx.reply(WHO, _who(ctx))

    async def slow_who(ctx: Context, packet: Packet) -> None:
        await trio.sleep(0.01)
        ctx.reply(SLOW_WHO, _who(ctx))

    def block(ctx: Context, packet: Packet) -> None:
        time.sleep(3600)

    router.add(WHO, who)
    router.add(SLOW_WHO, slow_who)
    router.add(BLOCK, block)
    return router


def exit_3() -> Router:
    """An application whose import-time set-up fails: the worker exits 3 before READY."""
    sys.exit(3)


def stderr_crash() -> Router:
    """An application that dies the way native code does: a message on fd 2, then exit."""
    os.write(2, b"Fatal Python error: written to stderr by the worker\n")
    os._exit(3)


# -- names ``master.app`` may hold, for the application check ------------------------------

THREE = 3


def needs_config(config: object) -> Router:
    """Not a factory: it takes an argument."""
    return default_router()


def returns_int() -> int:
    """Not a factory: declared to return something else."""
    return 3


def unannotated():  # type: ignore[no-untyped-def]  # no return annotation, on purpose
    """A factory the check cannot judge by its annotation: it passes, and is called later."""
    return default_router()
