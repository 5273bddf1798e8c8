"""The batched account path: many connections' requests answered together, each its own.

Virtual time and the memory store first (no threads: the autojump clock is exact),
then the same batch against SQLite and PostgreSQL (real threads), and the store's
batch calls on their own.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import attrs
import pytest
import trio
import trio.testing

from trioserver.accounts import Account, AccountService, MemoryStore, open_store
from trioserver.accounts.sqlite import SQLiteStore, _insert_many
from trioserver.client import Client
from trioserver.config import Config
from trioserver.framer import PING, Packet, encode
from trioserver.handlers import AccountBatches, Services, default_router, handle_register
from trioserver.handlers.context import BatchRun, Context
from trioserver.messages import (
    MessageCode,
    ResultCode,
    decode_login_reply,
    decode_register_reply,
    encode_login,
    encode_register,
)
from trioserver.testing import serve_in_memory

from .conftest import accounts_config

T = TypeVar("T")

OK, REJECTED, INVALID, LIMITED = (
    ResultCode.OK,
    ResultCode.REJECTED,
    ResultCode.INVALID_INPUT,
    ResultCode.RATE_LIMITED,
)
REGISTER, LOGIN, PING_CODE = int(MessageCode.REGISTER), int(MessageCode.LOGIN), 0


@attrs.define(eq=False)
class CountingStore(MemoryStore):
    """A memory store that records the size of every batched call."""

    creates: list[int] = attrs.Factory(list)
    lookups: list[int] = attrs.Factory(list)

    async def create_many(self, accounts: Sequence[Account]) -> list[bool]:
        self.creates.append(len(accounts))
        return await super().create_many(accounts)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Account]:
        self.lookups.append(len(keys))
        return await super().get_many(keys)


def fast_config(url: str = "memory:", **settings: object) -> Config:
    return accounts_config(
        url, accounts__hash="insecure-fast", connection__heartbeat=False, **settings
    )


def requests_of(c: int) -> tuple[bytes, list[tuple[int, int | None]]]:
    """Connection ``c``'s pipelined requests and the (code, result) it expects for each
    (None: decided by the limits shared with another connection, or by the race for
    the shared name)."""
    own = f"u{c}"
    sent = [
        encode_register(f"{own}a", "pw"),  # OK
        encode_register("bad\x01name", "pw"),  # INVALID (takes no token)
        PING,
        encode_register("shared", "pw"),  # exactly one connection gets OK
        encode_register(f"{own}a", "again"),  # REJECTED: its own name, already taken
        encode_login(f"{own}a", "pw"),  # OK: after its register (order kept)
        PING,
        encode_login(f"{own}a", "wrong"),  # REJECTED
        encode_register(f"{own}c", "pw"),  # LIMITED: the 4th registration, 3 allowed
        encode_login(f"{own}a", "pw"),  # OK
    ]
    expected: list[tuple[int, int | None]] = [
        (REGISTER, OK),
        (REGISTER, INVALID),
        (PING_CODE, None),
        (REGISTER, None),
        (REGISTER, REJECTED),
        (LOGIN, OK),
        (PING_CODE, None),
        (LOGIN, REJECTED),
        (REGISTER, LIMITED),
        (LOGIN, OK),
    ]
    return b"".join(sent), expected


def result_of(packet_code: int, body: bytes) -> int | None:
    if packet_code == REGISTER:
        return int(decode_register_reply(body).result)
    if packet_code == LOGIN:
        return int(decode_login_reply(body).result)
    return None


async def test_a_batch_of_many_connections_keeps_order_and_each_result(
    autojump_clock: trio.abc.Clock,
) -> None:
    """20 connections (16 networks of their own, 4 sharing one) pipeline valid, invalid,
    duplicate, rate-limited registrations, logins and pings; they are answered in a few
    batches, each connection in its own order with each request's own result."""
    store = CountingStore()
    config = fast_config(accounts__max_registrations_per_address=3)
    service = AccountService.from_settings(config.accounts, store=store)
    async with serve_in_memory(config, services=Services(config=config, accounts=service)) as srv:
        peers = [f"10.0.{c}.1:4000" for c in range(16)] + ["10.0.99.1:4000"] * 4
        clients = [await srv.connect(peer=peer) for peer in peers]
        got: dict[int, list[tuple[int, int | None]]] = {}

        async def talk(c: int, client: Client) -> None:
            data, expected = requests_of(c)
            await client.send_raw(data)
            replies = []
            for _ in expected:
                packet = await client.receive_packet()
                replies.append((packet.code, result_of(packet.code, packet.body)))
            got[c] = replies

        async with trio.open_nursery() as nursery:
            for c, client in enumerate(clients):
                nursery.start_soon(talk, c, client)
        assert trio.current_time() == 0  # no time passes: nothing waits for a timer

    shared_ok = 0
    for c in range(20):
        _, expected = requests_of(c)
        assert [code for code, _ in got[c]] == [code for code, _ in expected], c
        for i, ((_, want), (_, have)) in enumerate(zip(expected, got[c], strict=True)):
            if want is not None:
                if c >= 16 and i in (0, 4, 5, 7, 8, 9):
                    continue  # the shared network's limit: checked below
                assert have == want, (c, i, got[c])
        shared_ok += got[c][3][1] == OK
    assert shared_ok == 1
    # The 4 connections of one network share its 3 registrations (attempts that pass
    # the limit: OK, or REJECTED for a taken name); the rest of theirs are limited.
    shared = collections.Counter(got[c][i][1] for c in range(16, 20) for i in (0, 3, 4, 8))
    assert shared[LIMITED] == 16 - 3
    # Batches, not one store call per request.
    assert len(store.creates) <= 8, store.creates
    assert sum(store.creates) >= 4 * len(store.creates), store.creates
    assert len(store.lookups) <= 8, store.lookups


async def test_duplicate_registrations_in_one_batch_give_exactly_one_ok(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = CountingStore()
    config = fast_config(
        accounts__max_registrations_per_address=0, accounts__max_failures_per_name=0
    )
    service = AccountService.from_settings(config.accounts, store=store)
    async with serve_in_memory(config, services=Services(config=config, accounts=service)) as srv:
        clients = [await srv.connect() for _ in range(10)]
        results: list[int] = []

        async def register(client: Client, password: str) -> None:
            await client.send_raw(encode_register("Alice", password) * 2)
            for _ in range(2):
                reply = decode_register_reply((await client.receive_packet()).body)
                results.append(reply.result)

        async with trio.open_nursery() as nursery:
            for i, client in enumerate(clients):
                nursery.start_soon(register, client, f"pw{i}")
        assert sorted(results) == [OK] + [REJECTED] * 19
        assert sum(store.creates) <= len(store.creates)  # one "alice" per batch, at most
        winner = store.accounts["alice"]
        ok_client = await srv.connect()
        logins = [(await ok_client.login("ALICE", f"pw{i}")).result for i in range(10)]
        assert logins.count(OK) == 1  # the OK'd password, and only it, logs in
        assert winner.name == "Alice"


async def test_a_ping_after_a_login_waits_for_the_login_and_its_welcome(
    autojump_clock: trio.abc.Clock,
) -> None:
    """With on_login handlers each login is answered, then welcomed, before the
    connection's next request (a ping sent right after it comes back last)."""
    router = default_router()

    @router.on_login
    def welcome(ctx: Context) -> None:
        ctx.reply(100, b"welcome " + (ctx.user or "").encode())

    config = fast_config()
    async with serve_in_memory(config, router) as srv:
        setup = await srv.connect()
        assert (await setup.register("bob", "pw")).result == OK
        client = await srv.connect()
        await client.send_raw(encode_login("bob", "pw") + PING + encode_login("bob", "pw") + PING)
        codes = [(await client.receive_packet()).code for _ in range(6)]
        assert codes == [LOGIN, 100, PING_CODE, LOGIN, 100, PING_CODE]


async def test_the_batch_against_a_real_store(store_url: str) -> None:
    """SQLite and PostgreSQL: a batch of registrations from many connections is one
    commit per batch (SQLite) or one statement (PostgreSQL), and all log in after."""
    config = fast_config(store_url, accounts__max_registrations_per_address=0)
    service = AccountService.from_settings(config.accounts, store=open_store(store_url))
    await service.open()
    async with serve_in_memory(config, services=Services(config=config, accounts=service)) as srv:
        clients = [await srv.connect() for _ in range(20)]

        async def register_all(c: int, client: Client) -> None:
            names = [f"n{c}-{i}" for i in range(16)]
            await client.send_raw(
                b"".join(encode_register(n, f"pw-{n}") for n in names)
                + encode_register(f"n{c}-0", "dup")
                + b"".join(encode_login(n, f"pw-{n}") for n in names)
            )
            for name in names:
                reply = decode_register_reply((await client.receive_packet()).body)
                assert (reply.username, reply.result) == (name.encode(), OK)
            assert decode_register_reply((await client.receive_packet()).body).result == REJECTED
            for name in names:
                reply = decode_login_reply((await client.receive_packet()).body)
                assert (reply.username, reply.result) == (name.encode(), OK)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for c, client in enumerate(clients):
                    nursery.start_soon(register_all, c, client)
        stats = service.statistics()
        assert (stats.registered, stats.register_rejected, stats.logins) == (320, 20, 320)
    await service.aclose()


class CountingSQLiteStore(SQLiteStore):
    """Counts the commits of registrations (calls of the insert in a store thread)."""

    commits = 0

    async def _run(self, call: Callable[..., T], *args: object) -> T:
        if call is _insert_many:
            self.commits += 1
        return await super()._run(call, *args)


async def test_sqlite_commits_a_batch_at_once(tmp_path: Path) -> None:
    store = CountingSQLiteStore(tmp_path / "accounts.sqlite3")
    accounts = [Account(f"k{i}", f"K{i}", "h") for i in range(10)]
    try:
        assert await store.create_many([*accounts[:5], accounts[0]]) == [True] * 5 + [False]
        assert await store.create_many(accounts) == [False] * 5 + [True] * 5
        found = await store.get_many(["k1", "missing", "k9"])
        assert sorted(found) == ["k1", "k9"] and found["k9"].name == "K9"
        # Batches queued together share one commit: 30 callers, at most a few commits.
        async with trio.open_nursery() as nursery:
            for b in range(30):
                batch = [Account(f"b{b}-{i}", "x", "h") for i in range(20)]
                nursery.start_soon(store.create_many, batch)
        assert len(await store.get_many([f"b{b}-{i}" for b in range(30) for i in range(20)])) == 600
        assert store.commits <= 2 + 3, store.commits  # the two above, then a few group commits
    finally:
        await store.aclose()


async def test_store_batches_keep_request_order(store_url: str) -> None:
    """create_many: a key repeated in one call is created once, for its first account;
    get_many: only the keys that exist (both stores)."""
    store = open_store(store_url)
    await store.open()
    try:
        first = Account("dup", "Dup", "first-hash")
        later = Account("dup", "DUP", "later-hash")
        assert await store.create_many([first, Account("one", "One", "h"), later]) == [
            True,
            True,
            False,
        ]
        assert await store.create_many([]) == []
        found = await store.get_many(["dup", "nobody", "one"])
        assert sorted(found) == ["dup", "one"]
        assert found["dup"].password_hash == "first-hash"
        assert await store.get_many([]) == {}
    finally:
        await store.aclose()


def test_the_batched_replies_are_the_encoders_bytes() -> None:
    from trioserver.handlers.accounts import _login_reply, _register_reply
    from trioserver.messages import encode_login_reply, encode_register_reply

    for name in (b"a", b"alice", "é".encode() * 27, b"x" * 55):
        for result in ResultCode:
            assert _register_reply(result, name) == encode_register_reply(result, name)
            for code in (MessageCode.LOGIN, MessageCode.RESUME):
                for token in (b"", bytes(range(32))):
                    assert _login_reply(code, result, name, token) == encode_login_reply(
                        result, name, token, code
                    )


@attrs.define(eq=False)
class GatedCreates(MemoryStore):
    """A memory store whose batched inserts wait until the test opens the gate."""

    gate: trio.Event = attrs.Factory(trio.Event)
    waiting: int = 0

    async def create_many(self, accounts: Sequence[Account]) -> list[bool]:
        self.waiting += 1
        await self.gate.wait()
        return await super().create_many(accounts)


async def test_a_drain_waits_for_the_batch_in_hand(autojump_clock: trio.abc.Clock) -> None:
    """The worker stops while a batch's insert is in progress: the registrations are
    answered (OK, after the insert), the ping behind them too, then the connection closes."""
    store = GatedCreates()
    config = fast_config()
    service = AccountService.from_settings(config.accounts, store=store)
    async with serve_in_memory(config, services=Services(config=config, accounts=service)) as srv:
        client = await srv.connect()
        await client.send_raw(encode_register("a", "pw") + encode_register("b", "pw") + PING)
        await trio.testing.wait_all_tasks_blocked()
        assert store.waiting == 1
        srv.worker.stop(grace=30)
        await trio.sleep(5)
        store.gate.set()
        codes = [(await client.receive_packet()).code for _ in range(3)]
        assert codes == [REGISTER, REGISTER, PING_CODE]
        assert await client.at_eof()
        assert trio.current_time() == 5  # closed once answered, not at the grace's end
    assert sorted(store.accounts) == ["a", "b"]


async def test_a_connection_gone_during_its_batch_is_dropped_cleanly(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The client goes away while its registration is being stored: it is still stored
    (the insert was under way), the connection closes once the batch let it go, and the
    worker goes on serving others."""
    store = GatedCreates()
    config = fast_config()
    service = AccountService.from_settings(config.accounts, store=store)
    async with serve_in_memory(config, services=Services(config=config, accounts=service)) as srv:
        client = await srv.connect()
        await client.send_raw(encode_register("gone", "pw") + PING + PING)
        await trio.testing.wait_all_tasks_blocked()
        assert store.waiting == 1
        await client.aclose()
        await trio.testing.wait_all_tasks_blocked()
        store.gate.set()
        other = await srv.connect()
        assert (await other.login("gone", "pw")).result == OK
        assert await other.ping() == 0.0
        await trio.testing.wait_all_tasks_blocked()
        assert len(srv.worker.connections()) == 1  # only the other one is left


async def test_after_its_batch_a_connection_goes_on_to_async_handlers(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Requests behind an account run go on as the reader would take them: an async
    application handler through the handler tasks, then a plain one, in order."""
    router = default_router()

    @router.route(100)
    async def slow_echo(ctx: Context, packet: Packet) -> None:
        await trio.sleep(1)
        ctx.reply(100, packet.body)

    config = fast_config()
    async with serve_in_memory(config, router) as srv:
        client = await srv.connect()
        await client.send_raw(
            encode_register("carol", "pw") + encode(100, b"x") + PING + encode_login("carol", "pw")
        )
        codes = [(await client.receive_packet()).code for _ in range(4)]
        assert codes == [REGISTER, 100, PING_CODE, LOGIN]
        assert trio.current_time() == 1


async def test_a_failing_batch_handler_closes_its_connections(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(AccountBatches):
        async def handle_batch(self, runs: list[BatchRun]) -> None:
            await trio.lowlevel.checkpoint()
            raise RuntimeError("a bug in a batch handler")

    router = default_router()
    router.add(MessageCode.REGISTER, handle_register, body_size=100, replace=True, batch=Broken())
    async with serve_in_memory(fast_config(), router) as srv:
        client = await srv.connect()
        await client.send_raw(encode_register("dave", "pw") + PING)
        assert await client.at_eof()
        assert srv.worker.counters.handler_errors == 1
        other = await srv.connect()
        assert await other.ping() == 0.0
    assert "a bug in a batch handler" in caplog.text


async def test_resumes_in_a_batch(autojump_clock: trio.abc.Clock) -> None:
    """Pipelined resumes from many connections: a good token logs in (a fresh token each
    time), a forged one is rejected and counts as a failure (the limit then applies), a bad
    name is invalid input; each connection's replies come in its own order."""
    from trioserver.messages import encode_resume

    config = fast_config(accounts__max_failures_per_name=2)
    async with serve_in_memory(config) as srv:
        setup = await srv.connect()
        assert (await setup.register("erin", "pw")).result == OK
        token = (await setup.login("erin", "pw")).token
        forged = bytes(32)
        clients = [await srv.connect(peer=f"10.1.{c}.1:9") for c in range(8)]
        got: dict[int, list[tuple[int, int, bytes]]] = {}

        async def resume(c: int, client: Client) -> None:
            await client.send_raw(
                encode_resume("erin", token)
                + PING
                + encode_resume("ERIN", token)
                + encode_resume("erin", forged)
                + encode_resume("erin", forged)
                + encode_resume("erin", forged)
                + encode_resume("bad\x01", token)
            )
            replies = []
            for _ in range(7):
                packet = await client.receive_packet()
                if packet.code == PING_CODE:
                    replies.append((0, -1, b""))
                else:
                    reply = decode_login_reply(packet.body)
                    replies.append((packet.code, reply.result, reply.token))
            got[c] = replies

        async with trio.open_nursery() as nursery:
            for c, client in enumerate(clients):
                nursery.start_soon(resume, c, client)
    resume_code = int(MessageCode.RESUME)
    for replies in got.values():
        assert [(code, result) for code, result, _ in replies] == [
            (resume_code, OK),
            (0, -1),
            (resume_code, OK),
            (resume_code, REJECTED),
            (resume_code, REJECTED),
            (resume_code, LIMITED),  # 2 failures per (name, network)
            (resume_code, INVALID),
        ]
        fresh = {replies[0][2], replies[2][2]}
        assert len(fresh) == 2 and token not in fresh and bytes(32) not in fresh


async def test_shared_login_limits_keep_logins_one_by_one(autojump_clock: trio.abc.Clock) -> None:
    """With login limits shared through the store, logins and resumes take the one-by-one
    path (each reads and writes its limits); registrations are still batched, and a
    pipelined mix is answered in order with the shared limit applied."""
    from trioserver.accounts.shared_limits import MemoryLimits

    store = CountingStore(limits=MemoryLimits())
    config = fast_config(accounts__max_failures_per_name=2, accounts__shared_limits=True)
    service = AccountService.from_settings(config.accounts, store=store)
    assert service.batches and not service.batches_logins
    async with serve_in_memory(config, services=Services(config=config, accounts=service)) as srv:
        client = await srv.connect()
        await client.send_raw(
            b"".join(encode_register(f"f{i}", "pw") for i in range(4))
            + encode_login("f0", "wrong") * 3
            + PING
            + encode_login("f1", "pw")
        )
        results = [
            result_of(p.code, p.body) for p in [await client.receive_packet() for _ in range(9)]
        ]
        assert results == [OK] * 4 + [REJECTED, REJECTED, LIMITED, None, OK]
        assert store.creates == [4]  # the registrations: one batch
        assert store.lookups == []  # the logins: one by one, with their limits


async def test_a_connection_held_by_a_batch_moves_after_its_answers() -> None:
    """A reload's handoff waits for a connection whose registration is in a batch: the
    reply (after its insert) and the ping behind it come from the old worker, the next
    login from the new one, on the same socket."""
    from trioserver.config import Address
    from trioserver.handoff_channel import channel_pair
    from trioserver.worker import Worker

    store = GatedCreates()
    config = fast_config(server__listen=(Address("127.0.0.1", 0),))
    service = AccountService.from_settings(config.accounts, store=store)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            old, new = (
                Worker(config, services=Services(config=config, accounts=service), index=i)
                for i in (0, 1)
            )
            await nursery.start(old.serve)
            await nursery.start(new.serve)
            client = await Client.connect("127.0.0.1", old.addresses[0][1])
            await client.send_raw(encode_register("moved", "pw") + PING)
            await trio.testing.wait_all_tasks_blocked(0.01)
            assert store.waiting == 1
            old_end, new_end = channel_pair()
            moved: list[int] = []

            async def adopt() -> None:
                with new_end:
                    await new.adopt_from(new_end)

            async def hand_over() -> None:
                with old_end:
                    moved.append((await old.hand_over(old_end)).moved)

            nursery.start_soon(adopt)
            nursery.start_soon(hand_over)
            await trio.testing.wait_all_tasks_blocked(0.01)
            assert not moved  # the batch holds it
            store.gate.set()
            assert decode_register_reply((await client.receive_packet()).body).result == OK
            assert (await client.receive_packet()).code == PING_CODE
            assert (await client.login("moved", "pw")).result == OK
            assert moved == [1]
            assert new.statistics().packets_by_code[LOGIN] == 1  # the login went to the new
            assert old.statistics().packets_by_code.get(LOGIN, 0) == 0
            await client.aclose()
            old.stop(grace=0)
            new.stop(grace=0)
