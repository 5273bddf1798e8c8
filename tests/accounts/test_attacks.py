"""The attacks on accounts, in virtual time: a guesser cannot lock the owner out, limits key
by client network (IPv6 /64), the hash line answers 'busy' when full, the dummy hash is made
at start, look-alike names cannot both register."""

from __future__ import annotations

import trio
import trio.testing

from trioserver.accounts import AccountService, MemoryStore
from trioserver.accounts.confusables import skeleton
from trioserver.accounts.hashqueue import CLEAN, SUSPECT
from trioserver.config import Config
from trioserver.handlers import Services
from trioserver.messages import ResultCode
from trioserver.testing import serve_in_memory

from .conftest import accounts_config

OK, REJECTED, LIMITED, BUSY = (
    ResultCode.OK,
    ResultCode.REJECTED,
    ResultCode.RATE_LIMITED,
    ResultCode.BUSY,
)


def memory_config(**settings: object) -> Config:
    return accounts_config(
        "memory:", accounts__hash="insecure-fast", connection__heartbeat=False, **settings
    )


async def test_a_guesser_cannot_lock_the_owner_out(autojump_clock: trio.abc.Clock) -> None:
    """40 wrong guesses for alice from one network; the owner from a clean one gets in,
    every time, while the guesser is slowed to one try per window/burst."""
    config = memory_config(accounts__max_failures_per_name=5, accounts__failure_window=300.0)
    async with serve_in_memory(config) as server:
        owner = await server.connect(peer="203.0.113.9:5000")
        assert (await owner.register("alice", "secret")).result == OK
        guesser = await server.connect(peer="198.51.100.7:4000")
        results = [(await guesser.login("alice", f"guess{i}")).result for i in range(40)]
        assert results == [REJECTED] * 5 + [LIMITED] * 35
        for _ in range(6):
            assert (await owner.login("alice", "secret")).result == OK
        # the guesser's slowdown: one more try every 60 s, not a lock renewed forever
        await trio.sleep(59)
        assert (await guesser.login("alice", "x")).result == LIMITED
        await trio.sleep(1)
        assert (await guesser.login("alice", "x")).result == REJECTED
        assert (await guesser.login("alice", "x")).result == LIMITED
        assert (await owner.login("alice", "secret")).result == OK


async def test_guesses_from_many_networks_share_one_cap_the_owner_is_not_held_by(
    autojump_clock: trio.abc.Clock,
) -> None:
    config = memory_config(
        accounts__max_failures_per_name=5,
        accounts__max_failures_per_name_untrusted=10,
        accounts__failure_window=300.0,
    )
    async with serve_in_memory(config) as server:
        owner = await server.connect(peer="203.0.113.9:5000")
        assert (await owner.register("alice", "secret")).result == OK
        results = []
        for n in range(8):  # 8 networks, 3 guesses each
            guesser = await server.connect(peer=f"198.51.100.{n}:4000")
            results += [(await guesser.login("alice", "guess")).result for _ in range(3)]
        # each network's first guess is from a clean network; the other 16 share the cap
        assert results.count(REJECTED) == 8 + 10
        assert results.count(LIMITED) == 6
        assert (await owner.login("alice", "secret")).result == OK  # clean network
        # a network that failed but logged in to alice before is known: not held either
        assert (await owner.login("alice", "typo")).result == REJECTED
        assert (await owner.login("alice", "secret")).result == OK


async def test_limits_key_ipv6_clients_by_their_64(autojump_clock: trio.abc.Clock) -> None:
    config = memory_config(accounts__max_failures_per_address=4)
    async with serve_in_memory(config) as server:
        for i in range(4):  # four addresses of one /64
            client = await server.connect(peer=f"[2001:db8:1:2::{i + 1}]:4000")
            assert (await client.login(f"user{i}", "guess")).result == REJECTED
        same_64 = await server.connect(peer="[2001:db8:1:2:ffff::9]:4000")
        assert (await same_64.login("user9", "guess")).result == LIMITED
        other_64 = await server.connect(peer="[2001:db8:1:3::1]:4000")
        assert (await other_64.login("user9", "guess")).result == REJECTED


async def test_prefixes_are_settings(autojump_clock: trio.abc.Clock) -> None:
    config = memory_config(accounts__max_failures_per_address=2, accounts__ipv4_prefix=24)
    async with serve_in_memory(config) as server:
        for i in range(2):
            client = await server.connect(peer=f"10.1.2.{i + 1}:4000")
            assert (await client.login("bob", "guess")).result == REJECTED
        neighbour = await server.connect(peer="10.1.2.200:4000")
        assert (await neighbour.login("carol", "guess")).result == LIMITED


async def test_dummy_hash_is_made_at_start() -> None:
    """The first unknown-name login costs one hash, like any later one."""
    config = accounts_config("memory:", accounts__scrypt_n=1024)
    async with serve_in_memory(config) as server:
        service = server.worker.services.accounts
        client = await server.connect()
        before = service.statistics().hashes
        assert (await client.login("nobody", "x")).result == REJECTED
        assert service.statistics().hashes == before + 1


async def test_look_alike_names_cannot_both_register() -> None:
    assert skeleton("\u0430dmin") == "admin"  # Cyrillic а
    assert skeleton("admin") == "admin" and skeleton("zoë") == "zoë"
    async with serve_in_memory(memory_config()) as server:
        client = await server.connect()
        assert (await client.register("admin", "pw")).result == OK
        assert (await client.register("\u0430dmin", "pw")).result == REJECTED
        assert (await client.register("p\u0430ul", "pw")).result == OK  # Cyrillic first
        assert (await client.register("paul", "pw")).result == REJECTED  # then Latin
        assert (await client.register("p\u0430\u03c5l", "pw")).result == REJECTED  # а + Greek υ
        assert (await client.login("paul", "pw")).result == REJECTED  # the reservation
        assert (await client.login("p\u0430ul", "pw")).result == OK
        assert (await client.register("zoë", "pw")).result == OK  # no look-alike


async def test_look_alike_check_is_a_setting() -> None:
    async with serve_in_memory(memory_config(accounts__confusables=False)) as server:
        client = await server.connect()
        assert (await client.register("admin", "pw")).result == OK
        assert (await client.register("\u0430dmin", "pw")).result == OK


async def test_a_full_hash_line_answers_busy_at_once_and_pings_still_answer() -> None:
    """Real (cheap) scrypt behind one thread and a line of one: of many logins at once,
    the ones that find the line full get 'busy' without waiting, and a ping on another
    connection is answered while all of them are in flight."""
    config = accounts_config(
        "memory:",
        accounts__scrypt_n=2**14,
        accounts__hash_threads=1,
        accounts__hash_queue=1,
        accounts__max_failures_per_name=0,
        accounts__max_failures_per_address=0,
    )
    async with serve_in_memory(config) as server:
        clients = [await server.connect(peer=f"10.0.{i}.1:4000") for i in range(6)]
        pinger = await server.connect()
        results: list[int] = []

        async def login(i: int) -> None:
            results.append((await clients[i].login(f"user{i}", "pw")).result)

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(login, i)
            await trio.testing.wait_all_tasks_blocked()
            await pinger.ping()
        assert sorted(results) == [REJECTED, REJECTED] + [BUSY] * 4
        service = server.worker.services.accounts
        assert service.statistics().busy == 4


async def test_busy_is_counted_on_the_worker(autojump_clock: trio.abc.Clock) -> None:
    config = memory_config()
    store = MemoryStore()
    service = AccountService.from_settings(config.accounts, store=store)
    async with serve_in_memory(config, services=Services(config=config, accounts=service)) as s:
        client = await s.connect()
        await client.register("alice", "pw")
        await client.login("alice", "pw")
        await client.login("alice", "no")
        results = s.worker.counters.account_results
        assert results == {"register:0": 1, "login:0": 1, "login:1": 1}


async def test_a_network_that_keeps_asking_for_hashes_is_served_after_clean_ones(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Hash-use tokens: 30 a minute; under half left and the network's work waits behind
    clean networks' (busy answers never fail, so failures alone would not tell)."""
    service = AccountService.from_settings(memory_config().accounts)
    lanes = [service._lane("198.51.100.0/32") for _ in range(20)]
    assert lanes == [CLEAN] * 15 + [SUSPECT] * 5
    assert service._lane("203.0.113.9/32") == CLEAN  # another network is unaffected
    await trio.sleep(30)  # 15 tokens back, less the ones these two asks take
    assert service._lane("198.51.100.0/32") == CLEAN
