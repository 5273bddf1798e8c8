"""The PostgreSQL account store: every worker on every machine shares one database.

psycopg 3's ``AsyncConnectionPool`` runs on asyncio only, so under trio we use the
synchronous ``psycopg_pool.ConnectionPool`` from threads: each call runs in
``trio.to_thread.run_sync`` behind a ``trio.CapacityLimiter`` as large as the
pool, so a thread never waits inside the pool for longer than it takes to
(re)connect. The pool connects and reconnects in its own background threads;
each connection is checked before use, so after a database restart the first
request gets a fresh connection instead of an error.

Durability is PostgreSQL's: ``create`` is one autocommitted INSERT, acknowledged
after the commit (with the server's default ``synchronous_commit = on``, that is
after its WAL flush). Concurrent commits from many connections share WAL flushes
inside PostgreSQL, so no group commit is needed here.

The schema is created or migrated on the first successful connection, under a
transaction-level advisory lock so that workers starting together migrate once.
Any psycopg error (server down, pool timeout, lost connection) surfaces as
:class:`StoreUnavailable`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import trio

from .store import Account, AccountStore, StoreUnavailable, pending_migrations, redact_url

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

__all__ = ["PostgresStore"]

log = logging.getLogger("trioserver.accounts")

T = TypeVar("T")

#: Any constant; it names the lock that serialises schema migrations across workers.
_MIGRATION_LOCK: Final = 0x7472696F  # "trio"

MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """CREATE TABLE trioserver_accounts (
            name_key      text PRIMARY KEY,
            name          text NOT NULL,
            password_hash text NOT NULL,
            itype         integer NOT NULL DEFAULT 0,
            created_at    timestamptz NOT NULL
        )""",
    ),
}

_SELECT: Final = (
    "SELECT name_key, name, password_hash, itype, extract(epoch FROM created_at)::float8 "
    "FROM trioserver_accounts WHERE name_key = %s"
)
_INSERT: Final = (
    "INSERT INTO trioserver_accounts (name_key, name, password_hash, itype, created_at) "
    "VALUES (%s, %s, %s, %s, to_timestamp(%s)) ON CONFLICT (name_key) DO NOTHING"
)
_UPDATE: Final = (
    "UPDATE trioserver_accounts SET password_hash = %s WHERE name_key = %s AND password_hash = %s"
)


def _migrate(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS trioserver_schema (version integer NOT NULL)")
        row = conn.execute("SELECT coalesce(max(version), 0) FROM trioserver_schema").fetchone()
        current = int(row[0]) if row else 0
        for version in pending_migrations(current):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute("INSERT INTO trioserver_schema (version) VALUES (%s)", (version,))
            log.info("account store: migrated the PostgreSQL schema to version %d", version)


def _get(conn: psycopg.Connection[Any], key: str) -> Account | None:
    row = conn.execute(_SELECT, (key,)).fetchone()
    return None if row is None else Account(row[0], row[1], row[2], row[3], row[4])


def _insert(conn: psycopg.Connection[Any], account: Account) -> bool:
    a = account
    cursor = conn.execute(_INSERT, (a.key, a.name, a.password_hash, a.itype, a.created_at))
    return cursor.rowcount == 1


def _set_hash(conn: psycopg.Connection[Any], key: str, old: str, new: str) -> bool:
    return conn.execute(_UPDATE, (new, key, old)).rowcount == 1


class PostgresStore(AccountStore):
    """Accounts in the PostgreSQL database ``url`` names (see the module docstring)."""

    def __init__(self, url: str, *, pool_size: int = 4, connect_timeout: float = 5.0) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise ValueError(
                "a postgresql:// account store needs psycopg: pip install 'trioserver[postgres]'"
            ) from None
        self._errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        self.description = redact_url(url)
        self._limiter = trio.CapacityLimiter(pool_size)
        self._migrated = False
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=connect_timeout,
            # Give up background reconnection after this; a later request starts it again.
            reconnect_timeout=max(10.0, 2 * connect_timeout),
            check=ConnectionPool.check_connection,
            kwargs={"autocommit": True, "connect_timeout": max(1, math.ceil(connect_timeout))},
            name="trioserver-accounts",
        )

    def _in_thread(self, call: Callable[..., T], *args: object) -> T:
        try:
            with self._pool.connection() as conn:
                if not self._migrated:
                    _migrate(conn)
                    self._migrated = True
                return call(conn, *args)
        except self._errors as exc:
            raise StoreUnavailable(f"PostgreSQL {self.description}: {exc}") from exc

    async def _run(self, call: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(self._in_thread, call, *args, limiter=self._limiter)

    async def open(self) -> None:
        """Start the pool; it connects in the background (the database may come up later)."""
        await trio.to_thread.run_sync(lambda: self._pool.open(wait=False))

    async def create(self, account: Account) -> bool:
        return await self._run(_insert, account)

    async def get(self, key: str) -> Account | None:
        return await self._run(_get, key)

    async def set_password_hash(self, key: str, old: str, new: str) -> bool:
        return await self._run(_set_hash, key, old, new)

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(lambda: self._pool.close(timeout=5.0))
