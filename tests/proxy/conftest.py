"""Fixtures for the real-process PROXY tests: one throwaway PostgreSQL for the session.

It is the accounts tests' server (tests/accounts/pgserver.py). As there, when it
cannot start the tests skip, unless ``CI`` is set: then they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ..accounts.pgserver import PostgresServer, PostgresUnavailable


@pytest.fixture(scope="session")
def proxy_postgres() -> Iterator[PostgresServer]:
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
