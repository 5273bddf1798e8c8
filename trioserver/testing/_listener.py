"""An in-memory listener: the worker accepts the server ends of in-memory connections."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import trio
import trio.testing

from ._faults import Fault
from ._network import open_link

__all__ = ["MemoryListener"]

StreamPair = Callable[[], tuple[trio.StapledStream[Any, Any], trio.StapledStream[Any, Any]]]


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose connections are in-memory stream pairs.

    ``connect()`` returns the client's end. By default both directions buffer
    without limit (``memory_stream_pair``); ``lockstep=True`` gives a client whose
    unread replies block the server's ``send_all``, like a full TCP window; with
    ``faults`` (even empty) the connection is a simulated link that applies them
    (see :mod:`trioserver.testing`). Every server end has a ``peer`` attribute,
    which the worker reports as the client's address.
    """

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](math.inf)
        self._ids = itertools.count(1)
        self._closed = False

    async def connect(
        self,
        *,
        lockstep: bool = False,
        peer: str | None = None,
        faults: Sequence[Fault] | None = None,
        seed: int = 0,
        key: int | None = None,
    ) -> trio.abc.Stream:
        """A new connection's client end; ``seed`` and ``key`` pick the wire's random stream."""
        if self._closed:
            raise trio.ClosedResourceError("the listener is closed")
        number = next(self._ids)
        name = peer or f"memory:{number}"
        client: trio.abc.Stream
        server: trio.abc.Stream
        if faults is not None:
            if lockstep:
                raise ValueError("lockstep=True and faults do not mix: use StopReading(at=0)")
            client, server = open_link(
                faults, seed=seed, key=number if key is None else key, peer=name
            )
        else:
            pair: StreamPair = (
                trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
            )
            client, server = pair()
            server.peer = name  # type: ignore[attr-defined]
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
