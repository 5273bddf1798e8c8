"""Shared fixtures: configs for tests and a worker served in memory."""

from __future__ import annotations

from trioserver.config import Config


def make_config(**settings: object) -> Config:
    """Defaults with ``section__name=value`` overrides (e.g. ``connection__heartbeat=False``)."""
    return Config().replace(**settings)
