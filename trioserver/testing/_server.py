"""A real worker served on a memory listener, for tests: no sockets, no files."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from ..client import Client
from ..config import Config
from ..dispatch import Router
from ..handlers import Services
from ..worker import Worker
from ._faults import Fault
from ._listener import MemoryListener

__all__ = ["InMemoryServer", "memory_config", "serve_in_memory"]


def memory_config(**settings: Any) -> Config:
    """The defaults with accounts in memory and a fast hash, plus ``section__name=value`` overrides.

    A test must not write ``data/accounts.sqlite3`` into the working directory or
    spend 100 ms of scrypt per login; ``memory_config(connection__heartbeat=False)``
    changes one setting on top.
    """
    base: dict[str, Any] = {"accounts__url": "memory:", "accounts__hash": "insecure-fast"}
    return Config().replace(**{**base, **settings})


@attrs.define(eq=False)
class InMemoryServer:
    """A running worker and the listener that feeds it."""

    worker: Worker
    listener: MemoryListener

    async def connect(
        self,
        *,
        lockstep: bool = False,
        peer: str | None = None,
        faults: Sequence[Fault] | None = None,
        seed: int = 0,
        key: int | None = None,
    ) -> Client:
        """A protocol client on a new in-memory connection (with ``faults`` on its wire)."""
        stream = await self.listener.connect(
            lockstep=lockstep, peer=peer, faults=faults, seed=seed, key=key
        )
        return Client(stream)

    async def connect_stream(
        self,
        *,
        lockstep: bool = False,
        peer: str | None = None,
        faults: Sequence[Fault] | None = None,
        seed: int = 0,
        key: int | None = None,
    ) -> trio.abc.Stream:
        """A raw client stream (for sending fragments, half-closing, ...)."""
        return await self.listener.connect(
            lockstep=lockstep, peer=peer, faults=faults, seed=seed, key=key
        )


@asynccontextmanager
async def serve_in_memory(
    config: Config | None = None,
    router: Router | None = None,
    *,
    services: Services | None = None,
) -> AsyncIterator[InMemoryServer]:
    """Start a real worker on a memory listener; stop it (with a drain) on exit.

    ``config`` defaults to :func:`memory_config` and ``router`` to the built-in
    handlers (ping, register, login).
    """
    config = memory_config() if config is None else config
    listener = MemoryListener()
    worker = Worker(config, router, services=services, listeners=[listener])
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        try:
            yield InMemoryServer(worker, listener)
        finally:
            worker.stop()
