"""Fixtures for the account tests: a throwaway PostgreSQL server and a store URL per backend.

``store_url`` is parametrized over ``sqlite`` and ``postgres``, so every test using
it runs against both. The PostgreSQL server starts once per session; each test
starts from a database without the account tables. If PostgreSQL cannot start, its
cases skip, unless the ``CI`` environment variable is set: then they fail, so CI
never passes by skipping.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from trioserver.config import Config

from .pgserver import PostgresServer

BACKENDS = ("sqlite", "postgres")
_databases = itertools.count(1)


def accounts_config(url: str, **settings: object) -> Config:
    """A config for account tests: ``url``, a cheap real scrypt, no flood rule.

    scrypt N=1024 keeps the thread hop and the real hash format at ~5 ms a hash.
    """
    defaults: dict[str, object] = {
        "accounts__url": url,
        "accounts__scrypt_n": 1024,
        "connection__flood_check": False,
    }
    defaults.update(settings)
    return Config().replace(**defaults)


def fresh_database(server: PostgresServer) -> str:
    """The URL of a new, empty database on ``server`` (CREATE DATABASE: ~0.5 s)."""
    import psycopg

    name = f"accounts_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.url_for(name)


def emptied(url: str) -> str:
    """``url`` after dropping the account tables, so the store starts from no schema."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "DROP TABLE IF EXISTS trioserver_accounts, trioserver_schema, trioserver_limits"
        )
    return url


@pytest.fixture(scope="session")
def postgres_database(postgres_server: PostgresServer) -> str:
    """One database for the session's tests; each test empties it first."""
    return fresh_database(postgres_server)


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty account store of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'accounts.sqlite3'}"
    return emptied(request.getfixturevalue("postgres_database"))
