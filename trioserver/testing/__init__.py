"""Run a real worker in memory: no sockets, deterministic, fine with ``autojump_clock``.

::

    async def test_echo(nursery):
        async with serve_in_memory(config, router) as server:
            client = await server.connect()
            assert await client.ping() == 0.0     # virtual time: no latency at all

The worker is the real ``Worker``; only its listener is a :class:`MemoryListener`
handing out ``trio.testing`` memory streams.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing

from ..client import Client
from ..config import Config
from ..dispatch import Router
from ..handlers import Services
from ..worker import Worker

__all__ = ["InMemoryServer", "MemoryListener", "serve_in_memory"]

StreamPair = Callable[[], tuple[trio.StapledStream[Any, Any], trio.StapledStream[Any, Any]]]


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose connections are in-memory stream pairs.

    ``connect()`` returns the client's end. By default both directions buffer
    without limit (``memory_stream_pair``); pass ``lockstep=True`` for a client
    whose unread replies block the server's ``send_all``, like a full TCP window.
    """

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](math.inf)
        self._ids = itertools.count(1)
        self._closed = False

    async def connect(self, *, lockstep: bool = False, peer: str | None = None) -> trio.abc.Stream:
        if self._closed:
            raise trio.ClosedResourceError("the listener is closed")
        pair: StreamPair = (
            trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
        )
        client, server = pair()
        server.peer = peer or f"memory:{next(self._ids)}"  # type: ignore[attr-defined]
        try:
            self._send.send_nowait(server)
        except trio.BrokenResourceError:
            raise trio.ClosedResourceError("the listener is closed") from None
        await trio.lowlevel.checkpoint()
        return client

    async def accept(self) -> trio.abc.Stream:
        try:
            return await self._receive.receive()
        except trio.ClosedResourceError:
            raise trio.ClosedResourceError("the listener is closed") from None

    async def aclose(self) -> None:
        self._closed = True
        self._receive.close()
        await trio.lowlevel.checkpoint()


@attrs.define(eq=False)
class InMemoryServer:
    """A running worker and the listener that feeds it."""

    worker: Worker
    listener: MemoryListener

    async def connect(self, *, lockstep: bool = False, peer: str | None = None) -> Client:
        """A protocol client on a new in-memory connection."""
        return Client(await self.listener.connect(lockstep=lockstep, peer=peer))

    async def connect_stream(
        self, *, lockstep: bool = False, peer: str | None = None
    ) -> trio.abc.Stream:
        """A raw client stream (for sending fragments, half-closing, ...)."""
        return await self.listener.connect(lockstep=lockstep, peer=peer)


@asynccontextmanager
async def serve_in_memory(
    config: Config | None = None,
    router: Router | None = None,
    *,
    services: Services | None = None,
) -> AsyncIterator[InMemoryServer]:
    """Start a real worker on a memory listener; stop it (with a drain) on exit."""
    listener = MemoryListener()
    worker = Worker(config, router, services=services, listeners=[listener])
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        try:
            yield InMemoryServer(worker, listener)
        finally:
            worker.stop()
