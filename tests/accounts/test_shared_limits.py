"""Login limits shared by the workers of one store: one budget however the guesses are spread,
exact expiry in virtual time, what a success forgets and remembers, and each backend's table."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from trioserver.accounts import AccountService, MemoryStore, open_store
from trioserver.accounts.shared_limits import Limit, LimitUpdate, MemoryLimits, apply_update
from trioserver.accounts.store import AccountStore, StoreUnavailable
from trioserver.client import Client
from trioserver.config import Config
from trioserver.handlers import Services
from trioserver.messages import ResultCode
from trioserver.testing import InMemoryServer, serve_in_memory

from .conftest import accounts_config

OK, REJECTED, LIMITED = ResultCode.OK, ResultCode.REJECTED, ResultCode.RATE_LIMITED
EPOCH = 1_800_000_000.0
KEY = b"k" * 32
OWNER, GUESSER = "203.0.113.9:5000", "198.51.100.7:4000"


def memory_config(**settings: object) -> Config:
    defaults: dict[str, object] = {
        "accounts__max_failures_per_name": 5,
        "accounts__failure_window": 300.0,  # one failure costs 60 s per name
    }
    defaults.update(settings)
    return accounts_config(
        "memory:", accounts__hash="insecure-fast", connection__heartbeat=False, **defaults
    )


# -- the rule, pure ---------------------------------------------------------------------------


def test_a_burst_then_one_more_per_cost() -> None:
    limit = Limit(5, 300.0)
    table: dict[str, float] = {}
    for _ in range(5):
        assert limit.allows(table.get("k"), 0.0)
        apply_update(table, LimitUpdate(add=(("k", limit.cost),)), 0.0)
    assert table == {"k": 300.0}
    assert limit.level(table["k"], 0.0) == 5.0
    assert not limit.allows(table["k"], 0.0)
    assert not limit.allows(table["k"], 59.999)
    assert limit.allows(table["k"], 60.0)
    apply_update(table, LimitUpdate(add=(("k", limit.cost),)), 60.0)
    assert not limit.allows(table["k"], 119.999)
    assert limit.level(table["k"], 360.0) == 0.0


def test_an_overshoot_is_waited_out_in_full() -> None:
    """Eight failures recorded at once against a burst of five (concurrent guesses on
    several workers) hold the key three costs longer: the rate over time is the budget."""
    limit = Limit(5, 300.0)
    table: dict[str, float] = {}
    apply_update(table, LimitUpdate(add=(("k", limit.cost),) * 8), 0.0)
    assert limit.level(table["k"], 0.0) == 8.0
    assert not limit.allows(table["k"], 239.999)
    assert limit.allows(table["k"], 240.0)


def test_expired_rows_are_pruned_by_later_writes_and_untouched_keys_kept() -> None:
    table = {"old": 10.0, "fresh": 500.0, "mine": 5.0}
    apply_update(table, LimitUpdate(add=(("mine", 60.0),)), 100.0)
    assert table == {"fresh": 500.0, "mine": 160.0}
    apply_update(table, LimitUpdate(raise_to=(("known", 50.0),), delete=("fresh",)), 100.0)
    assert table == {"mine": 160.0, "known": 50.0}


def test_an_empty_update_is_false() -> None:
    assert not LimitUpdate()
    assert LimitUpdate(delete=("x",))


# -- two workers over one store, in virtual time ---------------------------------------------


@attrs.define(eq=False)
class CountingStore(MemoryStore):
    """A memory store with shared limits that counts its limit writes."""

    writes: int = 0

    async def update_limits(self, update: LimitUpdate, now: float) -> None:
        self.writes += 1
        await super().update_limits(update, now)


@asynccontextmanager
async def worker(store: AccountStore, **settings: object) -> AsyncIterator[InMemoryServer]:
    """One worker over ``store`` (shared with other workers); wall time is virtual."""
    config = memory_config(**settings)
    service = attrs.evolve(
        AccountService.from_settings(config.accounts, store=store),
        session_key=KEY,
        wall_clock=lambda: EPOCH + trio.current_time(),
    )
    async with serve_in_memory(config, services=Services(config=config, accounts=service)) as s:
        yield s


@asynccontextmanager
async def two_workers(
    store: AccountStore, **settings: object
) -> AsyncIterator[tuple[InMemoryServer, InMemoryServer]]:
    async with worker(store, **settings) as a, worker(store, **settings) as b:
        owner = await a.connect(peer=OWNER)
        assert (await owner.register("alice", "secret")).result == OK
        yield a, b


async def alternating(
    a: InMemoryServer, b: InMemoryServer, attempt: Callable[[Client], object], n: int
) -> list[ResultCode]:
    """``n`` attempts from the guesser's network, every other one on the other worker."""
    clients = [await a.connect(peer=GUESSER), await b.connect(peer=GUESSER)]
    results = []
    for i in range(n):
        reply = await attempt(clients[i % 2])  # type: ignore[misc]
        results.append(reply.result)
    return results


def guess(client: Client) -> object:
    return client.login("alice", "wrong")


async def test_two_workers_share_one_budget_and_its_refill(autojump_clock: trio.abc.Clock) -> None:
    store = CountingStore(limits=MemoryLimits())
    async with two_workers(store) as (a, b):
        start = trio.current_time()
        assert await alternating(a, b, guess, 12) == [REJECTED] * 5 + [LIMITED] * 7
        assert store.writes == 5  # one per failure, none for the refused attempts
        await trio.sleep(start + 60 - trio.current_time() - 0.001)
        assert await alternating(a, b, guess, 2) == [LIMITED] * 2
        await trio.sleep(0.001)  # 60 s after the burst: one more try, on either worker
        assert await alternating(a, b, guess, 2) == [REJECTED, LIMITED]
        for server in (a, b):  # the owner, from a clean network, is not held
            owner = await server.connect(peer=OWNER)
            assert (await owner.login("alice", "secret")).result == OK
        assert store.writes == 6  # and a clean login writes nothing


async def test_without_shared_limits_each_worker_counts_its_own(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The memory store's default (one worker's store): two budgets, as with the setting off."""
    async with two_workers(MemoryStore()) as (a, b):
        assert await alternating(a, b, guess, 12) == [REJECTED] * 10 + [LIMITED] * 2
    store = MemoryStore(limits=MemoryLimits())
    async with two_workers(store, accounts__shared_limits=False) as (a, b):
        assert await alternating(a, b, guess, 12) == [REJECTED] * 10 + [LIMITED] * 2
    assert store.limits is not None and store.limits.untils == {}


async def test_a_success_forgets_the_pairs_failures_on_every_worker(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with two_workers(MemoryStore(limits=MemoryLimits())) as (a, b):
        typist = await a.connect(peer=GUESSER)
        for _ in range(4):
            assert (await typist.login("alice", "typo")).result == REJECTED
        assert (await typist.login("alice", "secret")).result == OK
        assert await alternating(a, b, guess, 7) == [REJECTED] * 5 + [LIMITED] * 2


async def test_bad_tokens_count_on_every_worker(autojump_clock: trio.abc.Clock) -> None:
    async with two_workers(MemoryStore(limits=MemoryLimits())) as (a, b):
        owner = await b.connect(peer=OWNER)
        token = (await owner.login("alice", "secret")).token

        def forged(client: Client) -> object:
            return client.resume("alice", bytes(32))

        assert await alternating(a, b, forged, 7) == [REJECTED] * 5 + [LIMITED] * 2
        stolen = await a.connect(peer=GUESSER)  # even a good token, from the held pair
        assert (await stolen.resume("alice", token)).result == LIMITED
        assert (await owner.resume("alice", token)).result == OK


async def test_a_known_network_stays_known_on_the_other_worker(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The owner's network failed once and then logged in (on A); guessers from many
    networks use up the name's untrusted budget; the owner, still failing-network, gets
    in on B, which never saw it log in, because the store remembers the pair."""
    settings = {"accounts__max_failures_per_name_untrusted": 4}
    async with two_workers(MemoryStore(limits=MemoryLimits()), **settings) as (a, b):
        owner_a = await a.connect(peer=OWNER)
        assert (await owner_a.login("alice", "typo")).result == REJECTED
        assert (await owner_a.login("alice", "secret")).result == OK
        for i in range(8):  # each guesser network: a first failure elsewhere, then alice
            server = (a, b)[i % 2]
            guesser = await server.connect(peer=f"198.51.100.{i}:4000")
            assert (await guesser.login("bob", "x")).result == REJECTED
            expected = REJECTED if i < 4 else LIMITED
            assert (await guesser.login("alice", "x")).result == expected
        owner_b = await b.connect(peer=OWNER)
        assert (await owner_b.login("alice", "secret")).result == OK
        stranger = await b.connect(peer="192.0.2.1:1")  # failed elsewhere, never logged in
        assert (await stranger.login("bob", "x")).result == REJECTED
        assert (await stranger.login("alice", "secret")).result == LIMITED


# -- each backend's table ----------------------------------------------------------------------


@attrs.define
class FakeClock:
    now: float = EPOCH

    def __call__(self) -> float:
        return self.now


async def test_the_store_table_is_one_budget_for_two_workers(store_url: str) -> None:
    """Two services on two connections to one database (two workers), an exact fake clock."""
    config = memory_config(accounts__url=store_url)
    clock = FakeClock()
    services = []
    for _ in range(2):
        service = attrs.evolve(
            AccountService.from_settings(config.accounts), clock=clock, wall_clock=clock
        )
        await service.open()
        services.append(service)
    try:
        a, b = services
        assert await a.register(b"alice", b"secret", 0, OWNER) == OK
        results = [
            (await services[i % 2].login(b"alice", b"wrong", GUESSER)).code for i in range(8)
        ]
        assert results == [REJECTED] * 5 + [LIMITED] * 3
        clock.now += 59.999
        assert (await b.login(b"alice", b"wrong", GUESSER)).code == LIMITED
        clock.now += 0.001
        assert (await b.login(b"alice", b"wrong", GUESSER)).code == REJECTED
        assert (await a.login(b"alice", b"wrong", GUESSER)).code == LIMITED
        owner = await a.login(b"alice", b"secret", OWNER)
        assert owner.code == OK
        typist = await b.login(b"alice", b"secret", GUESSER)
        assert typist.code == LIMITED  # the pair is held, whoever it is
        resumed = await b.resume(b"alice", owner.token, OWNER)
        assert resumed.code == OK
    finally:
        for service in services:
            await service.aclose()


async def test_sqlite_limits_live_in_the_accounts_file_and_clean_logins_write_none(
    tmp_path: Path,
) -> None:
    path = tmp_path / "accounts.sqlite3"
    config = memory_config(accounts__url=f"sqlite:///{path}")
    service = AccountService.from_settings(config.accounts)
    await service.open()
    try:
        assert await service.register(b"alice", b"secret", 0, OWNER) == OK
        for _ in range(3):
            assert (await service.login(b"alice", b"secret", OWNER)).code == OK
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT count(*) FROM trioserver_limits").fetchone() == (0,)
        assert (await service.login(b"alice", b"x", GUESSER)).code == REJECTED
        with sqlite3.connect(path) as db:
            keys = {k for (k,) in db.execute("SELECT key FROM trioserver_limits")}
        db.close()
        assert keys == {"n\x1falice\x1f198.51.100.7/32", "a\x1f198.51.100.7/32"}
    finally:
        await service.aclose()


async def test_a_store_without_shared_limits_is_asked_nothing_more() -> None:
    store = open_store("memory:")
    assert not store.keeps_limits
    assert await store.get_with_limits("x", ["a"]) == (None, {})


@attrs.define(eq=False)
class WriteFailingStore(MemoryStore):
    """Shared limits that can be read but not written (the store failed in between)."""

    async def update_limits(self, update: LimitUpdate, now: float) -> None:
        await trio.lowlevel.checkpoint()
        raise StoreUnavailable("disk full")


async def test_a_failure_that_cannot_be_written_is_still_counted_by_the_worker(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The guess is answered (rejected) and the worker's own buckets keep the budget."""
    async with worker(WriteFailingStore(limits=MemoryLimits()), accounts__retry_interval=0.0) as a:
        owner = await a.connect(peer=OWNER)
        assert (await owner.register("alice", "secret")).result == OK
        guesser = await a.connect(peer=GUESSER)
        results = [(await guesser.login("alice", "wrong")).result for _ in range(7)]
        assert results == [REJECTED] * 5 + [LIMITED] * 2
