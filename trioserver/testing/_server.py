"""A real worker served on a memory listener, for tests: no sockets, no files.

With TLS (``tls=`` a :class:`~trioserver.tls.ServerTls`, or a config whose
``[tls] certificate`` is set), a second memory listener plays the TLS port: its
connections go through the worker's own handshake and ``SSLStream`` over
simulated links, so TLS rules run in virtual time too::

    async with serve_in_memory(config, tls=server_tls) as server:
        client = await server.connect(tls=client_context)   # handshake done
        raw = await server.connect_stream(tls_port=True)    # the TLS port, no TLS yet
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from ..client import Client
from ..config import Config
from ..handlers import Services
from ..handlers.router import Router
from ..tls import ServerTls, load_server_tls
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
    #: The TLS port (the worker's TLS listener), when the server has one.
    tls_listener: MemoryListener | None = None

    async def connect(
        self,
        *,
        lockstep: bool = False,
        peer: str | None = None,
        faults: Sequence[Fault] | None = None,
        seed: int = 0,
        key: int | None = None,
        tls: ssl.SSLContext | None = None,
        server_hostname: str = "localhost",
        proxy_header: bytes = b"",
    ) -> Client:
        """A protocol client on a new in-memory connection (with ``faults`` on its wire).

        ``proxy_header`` (if any) is sent first, in plaintext. With ``tls`` (a client
        context), it connects to the TLS port and completes the handshake after it.
        """
        if tls is None:
            stream = await self.listener.connect(
                lockstep=lockstep, peer=peer, faults=faults, seed=seed, key=key
            )
            if proxy_header:
                await stream.send_all(proxy_header)
            return Client(stream)
        raw = await self.connect_stream(
            lockstep=lockstep, peer=peer, faults=faults, seed=seed, key=key, tls_port=True
        )
        if proxy_header:
            await raw.send_all(proxy_header)
        secure = trio.SSLStream(raw, tls, server_hostname=server_hostname)
        await secure.do_handshake()
        return Client(secure)

    async def connect_stream(
        self,
        *,
        lockstep: bool = False,
        peer: str | None = None,
        faults: Sequence[Fault] | None = None,
        seed: int = 0,
        key: int | None = None,
        tls_port: bool = False,
    ) -> trio.abc.Stream:
        """A raw client stream (for sending fragments, half-closing, ...); ``tls_port``:
        to the TLS listener, before any handshake (plaintext, a stalled handshake...)."""
        listener = self.listener
        if tls_port:
            if self.tls_listener is None:
                raise ValueError("this server has no TLS port: pass tls= to serve_in_memory")
            listener = self.tls_listener
        return await listener.connect(
            lockstep=lockstep, peer=peer, faults=faults, seed=seed, key=key
        )


@asynccontextmanager
async def serve_in_memory(
    config: Config | None = None,
    router: Router | None = None,
    *,
    services: Services | None = None,
    tls: ServerTls | None = None,
) -> AsyncIterator[InMemoryServer]:
    """Start a real worker on a memory listener; stop it (with a drain) on exit.

    ``config`` defaults to :func:`memory_config` and ``router`` to the built-in
    handlers (ping, register, login). ``tls`` (or a config with a
    ``[tls]`` certificate) adds a TLS port.
    """
    config = memory_config() if config is None else config
    if tls is None and config.tls.certificate is not None:
        tls = load_server_tls(config.tls)
    listener = MemoryListener()
    tls_listener = MemoryListener() if tls is not None else None
    worker = Worker(
        config,
        router,
        services=services,
        listeners=[listener],
        tls_listeners=[tls_listener] if tls_listener is not None else [],
        tls=tls,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        try:
            yield InMemoryServer(worker, listener, tls_listener)
        finally:
            worker.stop()
