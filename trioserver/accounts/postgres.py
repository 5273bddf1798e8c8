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
inside PostgreSQL, so no group commit is needed here. A batch of registrations
(``create_many``) is one autocommitted ``INSERT ... SELECT FROM unnest(...)``:
one round trip, one commit; a batch of logins (``get_many``) one
``SELECT ... = ANY(...)``.

The schema is created or migrated on the first successful connection, under a
transaction-level advisory lock so that workers starting together migrate once.
Any psycopg error (server down, pool timeout, lost connection) surfaces as
:class:`StoreUnavailable`.

The shared login limits (:mod:`.shared_limits`) are an ``UNLOGGED`` table: every
instance counts one budget, a failure's write skips the WAL (after a crash or
a failover the limits start empty: budgets refilled early, nothing else), and
the limits come back with the account in the lookup's one round trip.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import trio

from .shared_limits import PRUNE, LimitUpdate
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
    2: (
        """CREATE UNLOGGED TABLE trioserver_limits (
            key   text PRIMARY KEY,
            until float8 NOT NULL
        )""",
        "CREATE INDEX trioserver_limits_until ON trioserver_limits (until)",
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
#: The account and its limit rows in one statement (one round trip): limit rows have no name.
_SELECT_WITH_LIMITS: Final = (
    "SELECT name_key, name, password_hash, itype, extract(epoch FROM created_at)::float8, "
    "NULL::float8 FROM trioserver_accounts WHERE name_key = %s "
    "UNION ALL SELECT key, NULL, NULL, NULL, NULL, until FROM trioserver_limits "
    "WHERE key = ANY(%s)"
)
#: Failures added, and a few expired rows deleted, in one statement.
_ADD_LIMITS: Final = (
    "WITH added AS (INSERT INTO trioserver_limits AS l (key, until) "
    "SELECT k, %(now)s + c FROM unnest(%(keys)s::text[], %(costs)s::float8[]) AS t(k, c) "
    "ON CONFLICT (key) DO UPDATE "
    "SET until = greatest(l.until, %(now)s) + (excluded.until - %(now)s) "
    "RETURNING 1), "
    "pruned AS (DELETE FROM trioserver_limits WHERE key IN (SELECT key FROM trioserver_limits "
    "WHERE until < %(now)s AND NOT key = ANY(%(keys)s) LIMIT %(prune)s) RETURNING 1) "
    "SELECT (SELECT count(*) FROM added), (SELECT count(*) FROM pruned)"
)
_RAISE_LIMIT: Final = (
    "INSERT INTO trioserver_limits AS l (key, until) VALUES (%s, %s) "
    "ON CONFLICT (key) DO UPDATE SET until = greatest(l.until, excluded.until)"
)
_DELETE_LIMITS: Final = "DELETE FROM trioserver_limits WHERE key = ANY(%s)"
_SELECT_MANY: Final = (
    "SELECT name_key, name, password_hash, itype, extract(epoch FROM created_at)::float8 "
    "FROM trioserver_accounts WHERE name_key = ANY(%s)"
)
_INSERT_MANY: Final = (
    "INSERT INTO trioserver_accounts (name_key, name, password_hash, itype, created_at) "
    "SELECT k, n, h, i, to_timestamp(c) "
    "FROM unnest(%s::text[], %s::text[], %s::text[], %s::integer[], %s::float8[]) "
    "AS batch (k, n, h, i, c) "
    "ON CONFLICT (name_key) DO NOTHING RETURNING name_key"
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


def _get_with_limits(
    conn: psycopg.Connection[Any], key: str, limit_keys: Sequence[str]
) -> tuple[Account | None, dict[str, float]]:
    account, untils = None, {}
    for row in conn.execute(_SELECT_WITH_LIMITS, (key, list(limit_keys))).fetchall():
        if row[1] is None:
            untils[row[0]] = float(row[5])
        else:
            account = Account(row[0], row[1], row[2], row[3], row[4])
    return account, untils


def _update_limits(conn: psycopg.Connection[Any], update: LimitUpdate, now: float) -> None:
    if update.add:
        keys = [k for k, _ in update.add]
        costs = [c for _, c in update.add]
        params = {"now": now, "keys": keys, "costs": costs, "prune": PRUNE}
        conn.execute(_ADD_LIMITS, params)
    for key, at in update.raise_to:
        conn.execute(_RAISE_LIMIT, (key, at))
    if update.delete:
        conn.execute(_DELETE_LIMITS, (list(update.delete),))


def _insert(conn: psycopg.Connection[Any], account: Account) -> bool:
    a = account
    cursor = conn.execute(_INSERT, (a.key, a.name, a.password_hash, a.itype, a.created_at))
    return cursor.rowcount == 1


def _get_many(conn: psycopg.Connection[Any], keys: list[str]) -> dict[str, Account]:
    rows = conn.execute(_SELECT_MANY, (keys,)).fetchall()
    return {row[0]: Account(row[0], row[1], row[2], row[3], row[4]) for row in rows}


def _insert_many(conn: psycopg.Connection[Any], accounts: Sequence[Account]) -> list[bool]:
    """One statement for all of ``accounts``; a key repeated among them is inserted once,
    for its first account (the later ones are False, as if taken)."""
    first: dict[str, Account] = {}
    for a in accounts:
        first.setdefault(a.key, a)
    rows = list(first.values())
    inserted = {
        row[0]
        for row in conn.execute(
            _INSERT_MANY,
            (
                [a.key for a in rows],
                [a.name for a in rows],
                [a.password_hash for a in rows],
                [a.itype for a in rows],
                [a.created_at for a in rows],
            ),
        ).fetchall()
    }
    return [a.key in inserted and first[a.key] is a for a in accounts]


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

    async def create_many(self, accounts: Sequence[Account]) -> list[bool]:
        if not accounts:
            await trio.lowlevel.checkpoint()
            return []
        return await self._run(_insert_many, accounts)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Account]:
        if not keys:
            await trio.lowlevel.checkpoint()
            return {}
        return await self._run(_get_many, list(keys))

    async def set_password_hash(self, key: str, old: str, new: str) -> bool:
        return await self._run(_set_hash, key, old, new)

    @property
    def keeps_limits(self) -> bool:
        return True

    async def get_with_limits(
        self, key: str, limit_keys: Sequence[str]
    ) -> tuple[Account | None, dict[str, float]]:
        return await self._run(_get_with_limits, key, limit_keys)

    async def update_limits(self, update: LimitUpdate, now: float) -> None:
        if update:
            await self._run(_update_limits, update, now)

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(lambda: self._pool.close(timeout=5.0))
