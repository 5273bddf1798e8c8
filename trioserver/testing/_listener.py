"""An in-memory listener: the worker accepts the server ends of in-memory connections."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import trio
import trio.testing

from ._faults import Fault
from ._network import open_link

__all__ = ["MemoryListener"]


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose connections are in-memory stream pairs.

    ``connect()`` returns the client's end. By default the connection is a
    simulated link (:func:`open_link`) whose directions buffer without limit; it
    is a transport of the worker's own seam, so the worker reads and writes it
    with exactly the code it uses for sockets. ``faults`` put faults on that
    link (see :mod:`trioserver.testing`). ``lockstep=True`` gives a trio
    ``lockstep_stream_pair`` instead, whose unread replies block the server's
    ``send_all`` like a full TCP window (the worker drives it as it drives any
    trio stream). Every server end has a ``peer`` attribute, which the worker
    reports as the client's address.
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
        if lockstep:
            if faults is not None:
                raise ValueError("lockstep=True and faults do not mix: use StopReading(at=0)")
            client, server = trio.testing.lockstep_stream_pair()
            server.peer = name  # type: ignore[attr-defined]
        else:
            client, server = open_link(
                faults or (), seed=seed, key=number if key is None else key, peer=name
            )
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
