"""Shared fixtures: configs for tests and a worker served in memory."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from trioserver.config import Config

from .accounts.pgserver import PostgresServer, PostgresUnavailable


def make_config(**settings: object) -> Config:
    """Defaults with ``section__name=value`` overrides (e.g. ``connection__heartbeat=False``).

    HTTP is off unless a test asks for it: a worker binding the default
    127.0.0.1:8080 in every test would share that port with whatever runs there.
    """
    settings.setdefault("http__listen", ())
    return Config().replace(**settings)


@pytest.fixture(autouse=True)
def _isolated_trioserver_logger() -> Iterator[None]:
    """Undo what a test's in-process ``configure_logging`` did to the root and the
    ``trioserver`` loggers (handlers, levels, propagate), so caplog keeps working."""
    loggers = [logging.getLogger(), logging.getLogger("trioserver")]
    saved = [(list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    yield
    for logger, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL for the session (tests/accounts/pgserver.py). When it
    cannot start the tests that need it skip, unless ``CI`` is set: then they fail."""
    try:
        server = PostgresServer.create()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but a PostgreSQL server cannot be started: {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    try:
        yield server
    finally:
        server.destroy()
