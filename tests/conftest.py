"""Shared fixtures: configs for tests and a worker served in memory."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from trioserver.config import Config


def make_config(**settings: object) -> Config:
    """Defaults with ``section__name=value`` overrides (e.g. ``connection__heartbeat=False``).

    HTTP is off unless a test asks for it: a worker binding the default
    127.0.0.1:8080 in every test would share that port with whatever runs there.
    """
    settings.setdefault("http__listen", ())
    return Config().replace(**settings)


@pytest.fixture(autouse=True)
def _isolated_trioserver_logger() -> Iterator[None]:
    """Undo what a test's in-process ``configure_logging`` did to the ``trioserver``
    logger (its handlers, level and propagate=False), so caplog keeps working."""
    logger = logging.getLogger("trioserver")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for handler in list(logger.handlers):
        if handler not in saved[0]:
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
