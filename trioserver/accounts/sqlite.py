"""The SQLite account store: one file under a data directory, shared by a machine's workers.

Durability: the database is in WAL mode with ``synchronous=FULL``, so every commit
fsyncs the WAL before ``create`` returns, and a registration is acknowledged only
once it survives a power loss. (``synchronous=NORMAL`` with WAL fsyncs only at
checkpoints: a commit then survives ``kill -9`` of the process, since the OS has
the data, but not a power cut or kernel crash. "Acknowledged only after durable"
needs FULL.)

The cost of FULL is one fsync per commit, so registrations that arrive together
share one: the first waiting task commits everything queued in one transaction
(group commit), the others wait for it. A batch of registrations
(``create_many``) joins the queue as one entry, so a batch is one commit, one
fsync, and its callers reply only after it. Reads (logins, resumes) run alongside
on their own connections, which WAL allows, and are grouped the same way: lookups
that arrive while one is in a thread go together in the next thread call, so a
reconnect storm of 10,000 resumes costs a few hundred thread hops, not 10,000; a
batch of logins is one query (``get_many``).

Calls run in threads (``trio.to_thread``) behind a capacity limiter of
``pool_size``; each thread borrows an idle connection, so a connection is used
by one thread at a time. Workers in other processes write to the same file;
``busy_timeout`` makes a writer wait for another's commit instead of failing.
A connection that raised a SQLite error is closed and replaced on the next call,
and any SQLite error surfaces as :class:`StoreUnavailable`.

The shared login limits (:mod:`.shared_limits`) are a table in the same file,
so every worker of the machine counts one budget. They are read in the same
thread call as the account; a failure writes one row on its own transaction
with ``synchronous=NORMAL`` (no fsync: a limit lost in a power cut is only a
budget refilled early, and an attacker must not be able to buy fsyncs).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TypeVar

import attrs
import trio

from .shared_limits import PRUNE, LimitUpdate
from .store import Account, AccountStore, StoreUnavailable, pending_migrations

__all__ = ["SQLiteStore"]

log = logging.getLogger("trioserver.accounts")

T = TypeVar("T")

#: Most registrations one group commit takes (a bigger batch is committed alone).
MAX_BATCH: Final = 4096
#: Most keys in one ``IN (...)`` of a batched lookup (SQLite's limit on parameters).
_MAX_PARAMETERS: Final = 500

#: Schema version → the statements that bring the previous version up to it.
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """CREATE TABLE trioserver_accounts (
            name_key      TEXT PRIMARY KEY,
            name          TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            itype         INTEGER NOT NULL DEFAULT 0,
            created_at    REAL NOT NULL
        )""",
    ),
    2: (
        """CREATE TABLE trioserver_limits (
            key   TEXT PRIMARY KEY,
            until REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX trioserver_limits_until ON trioserver_limits (until)",
    ),
}

_COLUMNS: Final = "name_key, name, password_hash, itype, created_at"


@attrs.define(eq=False)
class _Read:
    key: str
    limit_keys: tuple[str, ...]
    done: bool = False
    account: Account | None = None
    untils: dict[str, float] = attrs.Factory(dict)
    error: StoreUnavailable | None = None
    #: Set when this read is done, or when it is first in line and nobody is reading.
    wakeup: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class _Insert:
    accounts: Sequence[Account]
    done: bool = False
    created: list[bool] = attrs.Factory(list)
    error: StoreUnavailable | None = None


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema up to date; BEGIN IMMEDIATE serialises racing workers."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS trioserver_schema (version INTEGER NOT NULL)")
        (current,) = conn.execute(
            "SELECT coalesce(max(version), 0) FROM trioserver_schema"
        ).fetchone()
        for version in pending_migrations(current):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute("INSERT INTO trioserver_schema (version) VALUES (?)", (version,))
            log.info("account store: migrated the SQLite schema to version %d", version)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _set_wal(
    conn: sqlite3.Connection,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    pause: Callable[[float], None] = time.sleep,  # in a store thread, never the event loop
) -> str:
    """``PRAGMA journal_mode=WAL``, retried for up to ``timeout`` seconds while busy.

    On a new file, the first connections of workers starting together race to
    switch it to WAL, and a loser can get "database is locked" at once, without
    SQLite calling the busy handler (seen here in 10 of 200 races of two
    processes): its worker then answered its first requests "unavailable".
    """
    deadline = clock() + timeout
    delay = 0.001
    while True:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            return str(mode)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or clock() >= deadline:
                raise
        pause(delay)
        delay = min(delay * 2, 0.05)


def _insert_many(conn: sqlite3.Connection, accounts: Sequence[Account]) -> list[bool]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        created = [
            conn.execute(
                f"INSERT INTO trioserver_accounts ({_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (name_key) DO NOTHING",
                (a.key, a.name, a.password_hash, a.itype, a.created_at),
            ).rowcount
            == 1
            for a in accounts
        ]
        conn.execute("COMMIT")  # with synchronous=FULL, returns once the WAL is fsynced
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return created


def _read_many(
    conn: sqlite3.Connection, reads: Sequence[tuple[str, tuple[str, ...]]]
) -> tuple[dict[str, Account], dict[str, float]]:
    """Every account and limit row the reads name: one SELECT for each kind."""
    keys = list(dict.fromkeys(key for key, _ in reads))
    marks = ", ".join("?" * len(keys))
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM trioserver_accounts WHERE name_key IN ({marks})", keys
    ).fetchall()
    accounts = {row[0]: Account(*row) for row in rows}
    limit_keys = list(dict.fromkeys(k for _, lk in reads for k in lk))
    untils: dict[str, float] = {}
    if limit_keys:
        marks = ", ".join("?" * len(limit_keys))
        query = f"SELECT key, until FROM trioserver_limits WHERE key IN ({marks})"
        untils = dict(conn.execute(query, limit_keys).fetchall())
    return accounts, untils


def _update_limits(conn: sqlite3.Connection, update: LimitUpdate, now: float) -> None:
    conn.execute("PRAGMA synchronous=NORMAL")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO trioserver_limits (key, until) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET until = max(until, ?) + ?",
                [(key, now + cost, now, cost) for key, cost in update.add],
            )
            conn.executemany(
                "INSERT INTO trioserver_limits (key, until) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET until = max(until, excluded.until)",
                update.raise_to,
            )
            conn.executemany(
                "DELETE FROM trioserver_limits WHERE key = ?", [(k,) for k in update.delete]
            )
            touched = tuple(update.touched())
            marks = ", ".join("?" * len(touched))
            conn.execute(
                "DELETE FROM trioserver_limits WHERE key IN (SELECT key FROM trioserver_limits "
                f"WHERE until < ? AND key NOT IN ({marks}) LIMIT ?)",
                (now, *touched, PRUNE),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        conn.execute("PRAGMA synchronous=FULL")


def _get_many(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, Account]:
    found: dict[str, Account] = {}
    for start in range(0, len(keys), _MAX_PARAMETERS):
        chunk = keys[start : start + _MAX_PARAMETERS]
        marks = ", ".join("?" * len(chunk))
        for row in conn.execute(
            f"SELECT {_COLUMNS} FROM trioserver_accounts WHERE name_key IN ({marks})", chunk
        ):
            found[row[0]] = Account(*row)
    return found


def _set_hash(conn: sqlite3.Connection, key: str, old: str, new: str) -> bool:
    cursor = conn.execute(
        "UPDATE trioserver_accounts SET password_hash = ? WHERE name_key = ? AND password_hash = ?",
        (new, key, old),
    )
    return cursor.rowcount == 1


class SQLiteStore(AccountStore):
    """Accounts in the SQLite file ``path`` (see the module docstring)."""

    def __init__(self, path: Path, *, pool_size: int = 4, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        # Absolute in logs: a relative path resolves against the worker's working directory.
        self.description = f"sqlite:{self.path.absolute()}"
        self._busy_timeout = busy_timeout
        self._limiter = trio.CapacityLimiter(pool_size)
        self._idle: list[sqlite3.Connection] = []
        self._migrated = False
        self._queue: list[_Insert] = []
        self._committing = False
        self._committed = trio.Event()
        self._reads: list[_Read] = []
        self._reading = False
        self._closed = False

    # -- threads ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # used by one thread at a time, not always the same one
        )
        try:
            mode = _set_wal(conn, self._busy_timeout)
            if mode != "wal":
                raise StoreUnavailable(f"{self.path}: cannot use WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            if not self._migrated:
                _migrate(conn)
                self._migrated = True
        except BaseException:
            conn.close()
            raise
        return conn

    def _in_thread(self, call: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise StoreUnavailable("the account store is closed")
        try:
            conn = self._idle.pop()  # list.pop is atomic: no two threads get one connection
        except IndexError:
            conn = None
        try:
            if conn is None:
                conn = self._connect()
            result = call(conn, *args)
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                conn.close()  # it may be in a bad state; the next call opens a fresh one
            raise StoreUnavailable(f"SQLite {self.path}: {exc}") from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        if self._closed:
            conn.close()
        else:
            self._idle.append(conn)
        return result

    async def _run(self, call: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(self._in_thread, call, *args, limiter=self._limiter)

    # -- the interface ---------------------------------------------------------------------

    async def open(self) -> None:
        """Nothing to do: the file is opened (and created) on first use."""
        await trio.lowlevel.checkpoint()

    async def create(self, account: Account) -> bool:
        """Queue ``account`` for the next group commit; return once that commit is durable."""
        (created,) = await self.create_many([account])
        return created

    async def create_many(self, accounts: Sequence[Account]) -> list[bool]:
        """Queue ``accounts`` for the next group commit (as one entry); return once it is
        durable."""
        pending = _Insert(accounts)
        self._queue.append(pending)
        while not pending.done:
            if self._committing:
                await self._committed.wait()
                continue
            batch = self._take_batch()
            self._committing = True
            try:
                created = await self._run(_insert_many, [a for p in batch for a in p.accounts])
            except StoreUnavailable as exc:
                for p in batch:
                    p.error = exc
            except BaseException:
                # Cancelled before a thread took the batch (or a bug): nothing is committed.
                error = StoreUnavailable("the commit was abandoned")
                for p in batch:
                    p.error = error
                raise
            else:
                start = 0
                for p in batch:
                    p.created = created[start : start + len(p.accounts)]
                    start += len(p.accounts)
            finally:
                for p in batch:
                    p.done = True
                self._committing = False
                self._committed.set()
                self._committed = trio.Event()
        if pending.error is not None:
            raise pending.error
        return pending.created

    def _take_batch(self) -> list[_Insert]:
        """The queued entries the next commit takes: up to MAX_BATCH accounts, at least one."""
        queue = self._queue
        count, size = 0, 0
        while count < len(queue) and (count == 0 or size + len(queue[count].accounts) <= MAX_BATCH):
            size += len(queue[count].accounts)
            count += 1
        batch = queue[:count]
        del queue[:count]
        return batch

    async def get_many(self, keys: Sequence[str]) -> dict[str, Account]:
        return await self._run(_get_many, list(keys))

    async def get(self, key: str) -> Account | None:
        account, _ = await self._read(key, ())
        return account

    async def _read(
        self, key: str, limit_keys: tuple[str, ...]
    ) -> tuple[Account | None, dict[str, float]]:
        """Queue a lookup for the next grouped read; return once it has run.

        Whoever is first in line when no read is running takes the line (up to
        ``MAX_BATCH``) to a thread; the others sleep on their own event, woken
        once when their read is done or when they are first in a free line (not
        all at every read: 10,000 waiters would each wake hundreds of times).
        """
        pending = _Read(key, limit_keys)
        self._reads.append(pending)
        if not self._reading and self._reads[0] is pending:
            pending.wakeup.set()
        while not pending.done:
            try:
                await pending.wakeup.wait()
            except BaseException:
                if not pending.done and pending in self._reads:
                    self._reads.remove(pending)  # never taken: it leaves the line
                self._wake_next_reader()
                raise
            if pending.done:
                break
            pending.wakeup = trio.Event()
            if self._reading:  # someone else took the line first: wait for the next turn
                continue
            batch = self._reads[:MAX_BATCH]
            del self._reads[:MAX_BATCH]
            self._reading = True
            try:
                accounts, untils = await self._run(
                    _read_many, [(p.key, p.limit_keys) for p in batch]
                )
            except StoreUnavailable as exc:
                for p in batch:
                    p.error = exc
            except BaseException:
                error = StoreUnavailable("the read was abandoned")
                for p in batch:
                    p.error = error
                raise
            else:
                for p in batch:
                    p.account = accounts.get(p.key)
                    p.untils = {k: untils[k] for k in p.limit_keys if k in untils}
            finally:
                for p in batch:
                    p.done = True
                    p.wakeup.set()
                self._reading = False
                self._wake_next_reader()
        if pending.error is not None:
            raise pending.error
        return pending.account, pending.untils

    def _wake_next_reader(self) -> None:
        if not self._reading and self._reads:
            self._reads[0].wakeup.set()

    async def set_password_hash(self, key: str, old: str, new: str) -> bool:
        return await self._run(_set_hash, key, old, new)

    @property
    def keeps_limits(self) -> bool:
        return True

    async def get_with_limits(
        self, key: str, limit_keys: Sequence[str]
    ) -> tuple[Account | None, dict[str, float]]:
        return await self._read(key, tuple(limit_keys))

    async def update_limits(self, update: LimitUpdate, now: float) -> None:
        if update:
            await self._run(_update_limits, update, now)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        if not idle:  # never used: no thread (keeps autojump-clock tests of others exact)
            await trio.lowlevel.checkpoint()
            return

        def close_all() -> None:
            for conn in idle:
                conn.close()

        await trio.to_thread.run_sync(close_all)
