"""Time and failure: limits refilling in virtual time, a store that fails and comes back,
what gets logged (never a password), re-hashing, schema versions, a real PostgreSQL outage."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from trioserver.accounts import (
    Account,
    AccountService,
    MemoryStore,
    StoreUnavailable,
    open_store,
)
from trioserver.client import Client
from trioserver.config import Config
from trioserver.handlers import Services
from trioserver.messages import ResultCode
from trioserver.testing import serve_in_memory

from .conftest import accounts_config
from .pgserver import PostgresServer

OK, REJECTED, UNAVAILABLE, LIMITED = (
    ResultCode.OK,
    ResultCode.REJECTED,
    ResultCode.SERVER_UNAVAILABLE,
    ResultCode.RATE_LIMITED,
)


@attrs.define(eq=False)
class FlakyStore(MemoryStore):
    """A memory store that can be switched off; counts the calls that reach it."""

    broken: bool = False
    calls: int = 0

    def _check(self) -> None:
        self.calls += 1
        if self.broken:
            raise StoreUnavailable("the test switched the store off")

    async def create(self, account: Account) -> bool:
        self._check()
        return await super().create(account)

    async def get(self, key: str) -> Account | None:
        self._check()
        return await super().get(key)

    async def create_many(self, accounts: Sequence[Account]) -> list[bool]:
        self._check()
        return await super().create_many(accounts)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Account]:
        self._check()
        return await super().get_many(keys)


def memory_config(**settings: object) -> Config:
    """No threads anywhere (memory store, inline hash): safe with the autojump clock.

    No heartbeat either: these tests sleep minutes of virtual time between requests.
    """
    return accounts_config(
        "memory:", accounts__hash="insecure-fast", connection__heartbeat=False, **settings
    )


def serve_with(config: Config, store: MemoryStore):  # type: ignore[no-untyped-def]
    service = AccountService.from_settings(config.accounts, store=store)
    return serve_in_memory(config, services=Services(config=config, accounts=service))


async def test_locked_name_unlocks_as_tokens_return(autojump_clock: trio.abc.Clock) -> None:
    # 3 failures per 300 s window: one token back every 100 s.
    config = memory_config(accounts__max_failures_per_name=3, accounts__failure_window=300.0)
    async with serve_in_memory(config) as server:
        client = await server.connect()
        assert (await client.register("alice", "secret")).result == OK
        for _ in range(3):
            assert (await client.login("alice", "guess")).result == REJECTED
        assert (await client.login("alice", "secret")).result == LIMITED
        await trio.sleep(99)
        assert (await client.login("alice", "secret")).result == LIMITED
        await trio.sleep(1)
        assert (await client.login("alice", "guess")).result == REJECTED  # the one token
        assert (await client.login("alice", "secret")).result == LIMITED
        await trio.sleep(100)
        assert (await client.login("alice", "secret")).result == OK
        # success forgives: a full burst of failures is allowed again
        for _ in range(3):
            assert (await client.login("alice", "guess")).result == REJECTED
        assert (await client.login("alice", "guess")).result == LIMITED


async def test_successful_logins_are_never_limited(autojump_clock: trio.abc.Clock) -> None:
    config = memory_config(accounts__max_failures_per_name=1, accounts__max_failures_per_address=1)
    async with serve_in_memory(config) as server:
        client = await server.connect()
        assert (await client.register("alice", "secret")).result == OK
        for _ in range(50):
            assert (await client.login("alice", "secret")).result == OK


@attrs.define(eq=False)
class GatedStore(MemoryStore):
    """A memory store whose lookups wait until the test opens the gate."""

    gate: trio.Event = attrs.Factory(trio.Event)
    waiting: int = 0

    async def get(self, key: str) -> Account | None:
        self.waiting += 1
        await self.gate.wait()
        return await super().get(key)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Account]:
        self.waiting += len(keys)
        await self.gate.wait()
        return await super().get_many(keys)


async def test_concurrent_guesses_cannot_overshoot_the_limit(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Guesses that wait for the store together still spend one token each, one after the
    other: with 5 failures allowed per name, 6 concurrent wrong guesses give 5 REJECTED
    and 1 RATE_LIMITED; 6 concurrent right logins all get in (each gives its token back
    before the next takes one)."""
    store = GatedStore()
    config = memory_config(accounts__max_failures_per_name=5)
    async with serve_with(config, store) as server:
        setup = await server.connect()
        store.gate.set()
        assert (await setup.register("alice", "secret")).result == OK
        store.gate = trio.Event()
        clients = [await server.connect() for _ in range(6)]

        async def attempts(password: str) -> list[int]:
            results: list[int] = []

            async def login(client: Client) -> None:
                results.append((await client.login("alice", password)).result)

            async with trio.open_nursery() as nursery:
                for client in clients:
                    nursery.start_soon(login, client)
                await trio.testing.wait_all_tasks_blocked()
                assert store.waiting >= 1  # they wait for the store together
                store.gate.set()
            return sorted(results)

        assert await attempts("secret") == [OK] * 6
        store.gate, store.waiting = trio.Event(), 0
        assert await attempts("guess") == sorted([REJECTED] * 5 + [LIMITED])


async def test_store_failure_answers_unavailable_and_recovers(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore()
    config = memory_config(accounts__retry_interval=5.0)
    async with serve_with(config, store) as server:
        client = await server.connect()
        assert (await client.register("alice", "secret")).result == OK
        store.broken = True
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="trioserver.accounts"):
            assert (await client.login("alice", "secret")).result == UNAVAILABLE
            calls = store.calls
            # Within retry_interval nobody waits on the store: answered at once.
            for _ in range(10):
                assert (await client.register("bob", "pw")).result == UNAVAILABLE
                assert (await client.login("alice", "secret")).result == UNAVAILABLE
                assert await client.ping() == 0.0  # pings keep being served
            assert store.calls == calls
            await trio.sleep(5)
            assert (await client.login("alice", "secret")).result == UNAVAILABLE  # the probe
            assert store.calls == calls + 1
            store.broken = False
            await trio.sleep(5)
            assert (await client.login("alice", "secret")).result == OK
            assert (await client.register("bob", "pw")).result == OK
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "switched the store off" in errors[0].getMessage()
        back = [r.getMessage() for r in caplog.records if "is back" in r.getMessage()]
        assert back == ["account store memory is back (22 requests got 'server unavailable')"]
        stats = server.worker.services.accounts.statistics()
        assert stats.store_up and stats.unavailable == 22


async def test_passwords_never_reach_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore()
    config = memory_config(accounts__max_failures_per_name=2)
    secrets = ["Correct-Horse-1", "Wrong-Guess-2", "Bad\x01Ctl-3"]
    with caplog.at_level(logging.DEBUG):
        async with serve_with(config, store) as server:
            client = await server.connect()
            await client.register("alice", secrets[0])
            await client.register("alice", secrets[1])
            for secret in secrets:
                await client.login("alice", secret)
                await client.register("x", secret)
            await client.login("alice", secrets[1])  # rate limited
            store.broken = True
            await client.login("alice", secrets[0])
    text = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records)
    assert "alice" in text  # names are logged ...
    for secret in secrets:
        assert secret not in text  # ... passwords never
    assert all(secret not in repr(a) for a in store.accounts.values() for secret in secrets)


async def test_login_rehashes_a_password_stored_with_other_parameters(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'accounts.sqlite3'}"
    async with serve_in_memory(accounts_config(url, accounts__scrypt_n=1024)) as server:
        client = await server.connect()
        assert (await client.register("alice", "secret")).result == OK
    async with serve_in_memory(accounts_config(url, accounts__scrypt_n=2048)) as server:
        client = await server.connect()
        assert (await client.login("alice", "secret")).result == OK
        account = await server.worker.services.accounts.store.get("alice")
        assert account.password_hash.startswith("$scrypt$ln=11,")
        assert (await client.login("alice", "secret")).result == OK
    async with serve_in_memory(accounts_config(url, accounts__hash="insecure-fast")) as server:
        client = await server.connect()
        assert (await client.login("alice", "secret")).result == OK  # old hashes still verify
        account = await server.worker.services.accounts.store.get("alice")
        assert account.password_hash.startswith("$sha256-insecure$")


async def test_schema_is_versioned_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "accounts.sqlite3"
    store = open_store(f"sqlite:///{path}")
    assert await store.get("nobody") is None  # creates the schema
    await store.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM trioserver_schema").fetchall() == [(1,), (2,)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        db.execute("INSERT INTO trioserver_schema VALUES (3)")
    db.close()
    store = open_store(f"sqlite:///{path}")
    with pytest.raises(StoreUnavailable, match="newer than this trioserver"):
        await store.get("nobody")
    await store.aclose()


async def test_sqlite_store_in_an_unwritable_place_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    async with serve_in_memory(accounts_config(f"sqlite:///{tmp_path / 'file' / 'a.db'}")) as srv:
        client = await srv.connect()
        assert (await client.register("alice", "secret")).result == UNAVAILABLE
        await client.ping()  # answered (it raises if the connection was closed)...
        stats = srv.worker.statistics()  # ...and the failures above kicked nothing
        assert (stats.connections_open, stats.handler_errors, stats.kicks_by_reason) == (1, 0, {})


def test_bad_store_urls_are_config_errors() -> None:
    from trioserver.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"\[accounts\] url"):
        load_config(overrides=("accounts.url=mysql://db",))
    with pytest.raises(ValueError, match="sqlite"):
        open_store("sqlite://relative")
    assert load_config(overrides=('accounts.url=""',)).accounts.url == ""


@pytest.mark.slow
async def test_postgres_outage_then_reconnect(postgres_server: PostgresServer) -> None:
    """Stop the real server mid-test: 'server unavailable', pings go on; back when it is."""
    from .conftest import emptied, fresh_database

    url = emptied(fresh_database(postgres_server))
    config = accounts_config(url, accounts__connect_timeout=1.0, accounts__retry_interval=0.2)
    async with serve_in_memory(config) as server:
        client = await server.connect()
        assert (await client.register("alice", "secret")).result == OK
        await trio.to_thread.run_sync(postgres_server.stop)
        try:
            with trio.fail_after(10):
                assert (await client.login("alice", "secret")).result == UNAVAILABLE
            for _ in range(5):
                assert await client.ping() < 1.0
            assert (await client.register("bob", "pw")).result == UNAVAILABLE
        finally:
            await trio.to_thread.run_sync(postgres_server.start)
        with trio.fail_after(30):
            while (await client.login("alice", "secret")).result != OK:
                await trio.sleep(0.2)
        assert (await client.register("bob", "pw")).result == OK
        assert server.worker.services.accounts.statistics().store_up


class _BusyConnection:
    """Answers ``PRAGMA journal_mode=WAL`` with "database is locked" ``busy`` times."""

    def __init__(self, busy: int, code: int = sqlite3.SQLITE_BUSY) -> None:
        self.busy = busy
        self.code = code
        self.calls = 0

    def execute(self, sql: str) -> _BusyConnection:
        assert sql == "PRAGMA journal_mode=WAL"
        self.calls += 1
        if self.calls <= self.busy:
            exc = sqlite3.OperationalError("database is locked")
            exc.sqlite_errorcode = self.code
            raise exc
        return self

    def fetchone(self) -> tuple[str]:
        return ("wal",)


def test_switching_a_new_file_to_wal_is_retried_while_another_worker_holds_it() -> None:
    from trioserver.accounts.sqlite import _set_wal

    now = [0.0]
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    conn = _BusyConnection(busy=8)
    assert _set_wal(conn, 5.0, clock=lambda: now[0], pause=pause) == "wal"  # type: ignore[arg-type]
    assert conn.calls == 9
    assert pauses == [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.05, 0.05]

    # Busy for longer than the busy timeout: the error comes through, after the timeout.
    now[0] = 0.0
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _set_wal(_BusyConnection(busy=10**6), 1.0, clock=lambda: now[0], pause=pause)  # type: ignore[arg-type]
    assert 1.0 <= now[0] < 1.1

    # Any other error is not retried.
    with pytest.raises(sqlite3.OperationalError):
        _set_wal(_BusyConnection(busy=1, code=sqlite3.SQLITE_IOERR), 5.0, pause=pause)  # type: ignore[arg-type]
