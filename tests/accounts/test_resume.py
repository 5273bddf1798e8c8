"""Session resume (RESUME, 1): tokens any worker with the key accepts, and every way one is
refused (expired in virtual time, forged, for another name, after a password change)."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from trioserver.accounts import AccountService, MemoryStore
from trioserver.accounts.sessions import load_key
from trioserver.client import Client
from trioserver.config import Config
from trioserver.handlers import Services
from trioserver.messages import (
    TOKEN_OFFSET,
    MessageCode,
    ResultCode,
    encode_login_reply,
    encode_resume,
)
from trioserver.testing import InMemoryServer, serve_in_memory

from .conftest import accounts_config
from .test_matrix import router_with_whoami, whoami

OK, REJECTED, LIMITED = ResultCode.OK, ResultCode.REJECTED, ResultCode.RATE_LIMITED
EPOCH = 1_800_000_000.0
KEY = b"k" * 32


def memory_config(**settings: object) -> Config:
    return accounts_config(
        "memory:", accounts__hash="insecure-fast", connection__heartbeat=False, **settings
    )


@asynccontextmanager
async def worker(
    store: MemoryStore, key: bytes = KEY, **settings: object
) -> AsyncIterator[InMemoryServer]:
    """One worker over ``store`` whose tokens are signed with ``key``; wall time is virtual."""
    config = memory_config(**settings)
    service = attrs.evolve(
        AccountService.from_settings(config.accounts, store=store),
        session_key=key,
        wall_clock=lambda: EPOCH + trio.current_time(),
    )
    services = Services(config=config, accounts=service)
    async with serve_in_memory(config, router_with_whoami(), services=services) as s:
        yield s


async def logged_in(server: InMemoryServer, name: str = "alice") -> tuple[Client, bytes]:
    client = await server.connect(peer="203.0.113.9:5000")
    assert (await client.register(name, "secret")).result in (OK, REJECTED)
    reply = await client.login(name, "secret")
    assert reply.result == OK
    return client, reply.token


def body_of(packet: bytes) -> bytes:
    return packet[8:]


async def test_a_token_from_one_worker_resumes_on_another(autojump_clock: trio.abc.Clock) -> None:
    store = MemoryStore()
    async with worker(store) as a, worker(store) as b:
        _, token = await logged_in(a)
        assert len(token) == 32 and token != bytes(32)
        client = await b.connect(peer="198.51.100.1:5000")
        reply = await client.resume("ALICE", token)  # any spelling of the name
        assert reply.result == OK and reply.username == b"ALICE"
        assert reply.token != token and len(reply.token) == 32  # a fresh token
        assert (await client.resume("alice", reply.token)).result == OK
        assert b.worker.counters.account_results == {"resume:0": 2}


async def test_resume_sets_the_user_and_fires_on_login(autojump_clock: trio.abc.Clock) -> None:
    store = MemoryStore()
    async with worker(store) as a:
        _, token = await logged_in(a)
        client = await a.connect()
        assert await whoami(client) == ""
        assert (await client.resume("alice", token)).result == OK
        assert await whoami(client) == "alice"


async def test_an_expired_token_is_refused(autojump_clock: trio.abc.Clock) -> None:
    store = MemoryStore()
    async with worker(store, accounts__session_lifetime=3600.0) as a:
        _, token = await logged_in(a)
        client = await a.connect()
        await trio.sleep(3599)
        assert (await client.resume("alice", token)).result == OK
        await trio.sleep(1)
        assert (await client.resume("alice", token)).result == REJECTED


async def test_forged_tokens_and_other_keys_are_refused(autojump_clock: trio.abc.Clock) -> None:
    store = MemoryStore()
    async with worker(store) as a, worker(store, key=b"x" * 32) as other_key:
        _, token = await logged_in(a)
        client = await a.connect()
        for i in range(32):
            forged = bytearray(token)
            forged[i] ^= 1
            reply = await client.resume("alice", bytes(forged))
            assert reply.result in (REJECTED, LIMITED)
            assert reply.token == bytes(32)
        stranger = await other_key.connect()
        assert (await stranger.resume("alice", token)).result == REJECTED


async def test_a_token_is_for_its_name_only(autojump_clock: trio.abc.Clock) -> None:
    store = MemoryStore()
    async with worker(store) as a:
        _, alice_token = await logged_in(a, "alice")
        await logged_in(a, "bob")
        client = await a.connect()
        assert (await client.resume("bob", alice_token)).result == REJECTED
        assert (await client.resume("nobody", alice_token)).result == REJECTED


async def test_a_password_change_ends_the_sessions(autojump_clock: trio.abc.Clock) -> None:
    store = MemoryStore()
    async with worker(store) as a:
        _, token = await logged_in(a)
        account = store.accounts["alice"]
        assert await store.set_password_hash("alice", account.password_hash, "$new$hash")
        client = await a.connect()
        assert (await client.resume("alice", token)).result == REJECTED


async def test_bad_tokens_count_for_the_rate_limits(autojump_clock: trio.abc.Clock) -> None:
    store = MemoryStore()
    async with worker(store, accounts__max_failures_per_name=3) as a:
        _, token = await logged_in(a)
        client = await a.connect(peer="198.51.100.1:4000")
        results = [(await client.resume("alice", bytes(32))).result for _ in range(4)]
        assert results == [REJECTED] * 3 + [LIMITED]
        assert (await client.resume("alice", token)).result == LIMITED  # even a good one now
        owner = await a.connect(peer="203.0.113.9:5000")
        assert (await owner.resume("alice", token)).result == OK  # from its own network


async def test_wire_layout() -> None:
    token = bytes(range(32))
    body = body_of(encode_login_reply(0, b"alice", token))
    assert body[56:60] == bytes(4) and body[TOKEN_OFFSET : TOKEN_OFFSET + 32] == token
    assert len(body) == 96 and body[92:] == bytes(4)
    resume = encode_resume("alice", token)
    assert int.from_bytes(resume[2:4], "big") == MessageCode.RESUME == 1
    assert body_of(resume) == b"alice".ljust(56, b"\0") + token


async def test_without_a_service_resume_is_unavailable() -> None:
    config = Config().replace(accounts__url="", connection__flood_check=False)
    async with serve_in_memory(config) as server:
        client = await server.connect()
        assert (await client.resume("alice", bytes(32))).result == ResultCode.SERVER_UNAVAILABLE


def test_the_secret_file_is_made_once_private_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "data" / "session_secret"
    key = load_key(path)
    assert len(key) == 32 and load_key(path) == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert list(path.parent.iterdir()) == [path]  # no temporary left behind


async def test_resumes_that_arrive_while_the_key_is_read_wait_for_it(tmp_path: Path) -> None:
    """A reconnect storm right after a start: the first resumes find the key file not yet
    read; every one waits for that one read instead of being told 'unavailable'."""
    store, path = MemoryStore(), tmp_path / "session_secret"
    config = memory_config()

    def fresh_service() -> AccountService:
        return attrs.evolve(
            AccountService.from_settings(config.accounts, store=store),
            session_key=None,
            session_secret_path=path,
        )

    before = fresh_service()
    await before.open()
    assert await before.register(b"alice", b"secret", 0, "203.0.113.9:1") == OK
    token = (await before.login(b"alice", b"secret", "203.0.113.9:1")).token
    after = fresh_service()  # the restarted worker: same key file, not read yet
    await after.open()
    results: list[ResultCode] = []

    async def resume(i: int) -> None:  # from 20 networks: the per-pair cap is not tested here
        results.append((await after.resume(b"alice", token, f"198.51.100.{i}:1")).code)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(resume, i)
    assert results == [OK] * 20
