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

The server and client fixtures are async, so they need pytest-trio
(``pip install 'trioserver[testing]'``) and a trio test (``trio_mode = true``, or
``@pytest.mark.trio``); without either, asking for them fails at once with a
message that says which, instead of pytest's generic async-fixture error.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

import pytest

if TYPE_CHECKING:
    from ..client import Client
    from ..config import Config
    from ..handlers import Services
    from ..handlers.router import Router
    from ._server import InMemoryServer

__all__ = [
    "trioserver_client",
    "trioserver_config",
    "trioserver_router",
    "trioserver_server",
    "trioserver_services",
]

#: The fixtures below that are coroutines: only pytest-trio can run them.
_ASYNC_FIXTURES: Final = frozenset({"trioserver_server", "trioserver_client"})

_NO_PYTEST_TRIO: Final = (
    "{name} is an async fixture: it needs the pytest-trio plugin, which is {why}. "
    "Install it with pip install 'trioserver[testing]' (or pip install pytest-trio) "
    "and set trio_mode = true in your pytest configuration."
)
_NOT_A_TRIO_TEST: Final = (
    "{test} uses {name}, an async fixture that runs only in trio tests: make the test "
    "'async def' and set trio_mode = true in your pytest configuration, or mark it "
    "@pytest.mark.trio."
)


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest
) -> None:
    """Fail clearly when one of our async fixtures cannot run; otherwise do nothing."""
    name = fixturedef.argname
    if name not in _ASYNC_FIXTURES or fixturedef.func.__module__ != __name__:
        return  # not ours, or overridden by the user
    if not request.config.pluginmanager.hasplugin("trio"):
        if importlib.util.find_spec("pytest_trio") is None:
            why = "not installed"
        else:
            why = "installed but not loaded (was it disabled with -p no:trio?)"
        pytest.fail(_NO_PYTEST_TRIO.format(name=name, why=why), pytrace=False)
    if request.node.get_closest_marker("trio") is None:
        pytest.fail(_NOT_A_TRIO_TEST.format(test=request.node.name, name=name), pytrace=False)


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
