"""pytest fixtures for testing trioserver handlers (registered as a ``pytest11`` entry point).

Installed with trioserver, so any pytest-trio test can ask for them::

    @pytest.fixture
    def trioserver_router():              # override: serve your handlers
        router = trioserver.default_router()
        router.add(100, shout)
        return router

    async def test_shout(trioserver_client, autojump_clock):
        assert (await trioserver_client.request(100, b"hi")).body == b"HI"

Override ``trioserver_config`` (default: :func:`~trioserver.testing.memory_config`),
``trioserver_router`` (the built-in handlers) or ``trioserver_services`` (None) in
your ``conftest.py``; ``trioserver_server`` runs a real worker with them for the
test, in the test's own trio run (and clock), and ``trioserver_client`` is one
client connected to it. The imports are lazy so that loading the plugin costs
nothing in test runs that do not use it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ..client import Client
    from ..config import Config
    from ..dispatch import Router
    from ..handlers import Services
    from ._server import InMemoryServer

__all__ = [
    "trioserver_client",
    "trioserver_config",
    "trioserver_router",
    "trioserver_server",
    "trioserver_services",
]


@pytest.fixture
def trioserver_config() -> Config:
    """The worker's settings: defaults with accounts in memory and a fast hash."""
    from ._server import memory_config

    return memory_config()


@pytest.fixture
def trioserver_router() -> Router:
    """The handlers the worker serves: the built-ins (ping, register, login)."""
    from ..handlers import default_router

    return default_router()


@pytest.fixture
def trioserver_services() -> Services | None:
    """The worker's ``Services`` (None: the worker makes its own)."""
    return None


@pytest.fixture
async def trioserver_server(
    trioserver_config: Config,
    trioserver_router: Router,
    trioserver_services: Services | None,
) -> AsyncIterator[InMemoryServer]:
    """A real worker on a memory listener, for the span of the test."""
    from ._server import serve_in_memory

    async with serve_in_memory(
        trioserver_config, trioserver_router, services=trioserver_services
    ) as server:
        yield server


@pytest.fixture
async def trioserver_client(trioserver_server: InMemoryServer) -> Client:
    """One client connected to ``trioserver_server``."""
    return await trioserver_server.connect()
