"""Register and login through a real worker, against each backend (``store_url``).

Every result code of docs/protocol.md, the case rule, ``ctx.user``, brute-force limits
that refuse before hashing, and two workers sharing one store.
"""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

import pytest
import trio

from trioserver.accounts import AccountService
from trioserver.client import Client
from trioserver.framer import Packet
from trioserver.handlers import Context, Services, default_router
from trioserver.messages import MessageCode, ResultCode, decode_login_reply
from trioserver.testing import serve_in_memory

from .conftest import accounts_config

OK, REJECTED, INVALID, UNAVAILABLE, LIMITED = (
    ResultCode.OK,
    ResultCode.REJECTED,
    ResultCode.INVALID_INPUT,
    ResultCode.SERVER_UNAVAILABLE,
    ResultCode.RATE_LIMITED,
)
WHOAMI = 100


def router_with_whoami():  # type: ignore[no-untyped-def]
    """The default router plus msgCode 100: replies with ``ctx.user`` (empty if none)."""
    router = default_router()

    @router.route(WHOAMI)
    def whoami(ctx: Context, packet: Packet) -> None:
        ctx.reply(WHOAMI, (ctx.user or "").encode())

    return router


async def whoami(client: Client) -> str:
    return (await client.request(WHOAMI)).body.decode()


def accounts_of(server) -> AccountService:  # type: ignore[no-untyped-def]
    service = server.worker.services.accounts
    assert isinstance(service, AccountService)
    return service


async def test_register_then_login(store_url: str) -> None:
    async with serve_in_memory(accounts_config(store_url), router_with_whoami()) as server:
        client = await server.connect()
        assert await whoami(client) == ""
        reply = await client.register("alice", "secret", itype=7)
        assert (reply.result, reply.username) == (OK, b"alice")
        assert await whoami(client) == ""  # registering does not log in
        reply = await client.login("alice", "secret")
        assert (reply.result, reply.username) == (OK, b"alice")
        assert await whoami(client) == "alice"
        other = await server.connect()
        assert await whoami(other) == ""  # the user belongs to the connection


async def test_wrong_password_unknown_user_duplicate(store_url: str) -> None:
    async with serve_in_memory(accounts_config(store_url), router_with_whoami()) as server:
        client = await server.connect()
        assert (await client.register("alice", "secret")).result == OK
        assert (await client.login("alice", "Secret")).result == REJECTED
        assert (await client.login("bob", "secret")).result == REJECTED
        assert (await client.register("alice", "other")).result == REJECTED
        assert await whoami(client) == ""
        assert (await client.login("alice", "other")).result == REJECTED  # first one stays
        assert (await client.login("alice", "secret")).result == OK


async def test_names_are_case_insensitive(store_url: str) -> None:
    """The documented rule: one account per case-folded name; ctx.user as registered."""
    async with serve_in_memory(accounts_config(store_url), router_with_whoami()) as server:
        client = await server.connect()
        assert (await client.register("Alice", "secret")).result == OK
        assert (await client.register("ALICE", "x")).result == REJECTED
        assert (await client.register("alice", "x")).result == REJECTED
        reply = await client.login("aLiCe", "secret")
        assert (reply.result, reply.username) == (OK, b"aLiCe")  # echoes the request
        assert await whoami(client) == "Alice"
        assert (await client.register("Straße", "pw")).result == OK
        assert (await client.register("STRASSE", "pw")).result == REJECTED
        assert (await client.login("alice", "SECRET")).result == REJECTED  # passwords are not


def raw_body(code: int, name: bytes, password: bytes) -> bytes:
    """A body with exactly these field bytes (no NUL forced at the end)."""
    fields = name.ljust(56, b"\0")[:56] + password.ljust(40, b"\0")[:40]
    return (struct.pack(">i", 1) + fields) if code == MessageCode.REGISTER else fields


INVALID_CASES = [
    pytest.param(b"", b"secret", id="empty-name"),
    pytest.param(b"alice", b"", id="empty-password"),
    pytest.param(b"n" * 56, b"secret", id="name-fills-56"),
    pytest.param(b"alice", b"p" * 40, id="password-fills-40"),
    pytest.param(b"al\xffice", b"secret", id="name-bad-utf8"),
    pytest.param(b"alice", b"se\xc3cret", id="password-bad-utf8"),
    pytest.param(b"ali\x1bce", b"secret", id="name-control"),
    pytest.param(b"alice", b"sec\x07ret", id="password-control"),
    pytest.param(b" alice", b"secret", id="name-leading-space"),
]


@pytest.mark.parametrize(("name", "password"), INVALID_CASES)
@pytest.mark.parametrize("code", [MessageCode.REGISTER, MessageCode.LOGIN])
async def test_invalid_input(store_url: str, code: int, name: bytes, password: bytes) -> None:
    async with serve_in_memory(accounts_config(store_url)) as server:
        client = await server.connect()
        packet = await client.request(code, raw_body(code, name, password))
        assert packet.code == code
        if code == MessageCode.REGISTER:
            (result,) = struct.unpack_from(">i", packet.body)
            assert packet.body[60:] == bytes(40)  # the password is never echoed
        else:
            result = decode_login_reply(packet.body).result
            assert packet.body[60:] == bytes(36)
        assert result == INVALID
        assert accounts_of(server).statistics().hashes == 0


async def test_the_longest_valid_fields_work(store_url: str) -> None:
    async with serve_in_memory(accounts_config(store_url)) as server:
        client = await server.connect()
        name, password = "n" * 55, "p" * 39
        assert (await client.register(name, password)).result == OK
        assert (await client.login(name, password)).result == OK
        assert (await client.login(name, password[:-1])).result == REJECTED


async def test_failed_logins_per_name_are_rate_limited_without_hashing(store_url: str) -> None:
    config = accounts_config(store_url, accounts__max_failures_per_name=3)
    async with serve_in_memory(config) as server:
        client = await server.connect()
        assert (await client.register("alice", "secret")).result == OK
        for _ in range(3):
            assert (await client.login("alice", "guess")).result == REJECTED
        hashes = accounts_of(server).statistics().hashes
        assert (await client.login("alice", "guess")).result == LIMITED
        assert (await client.login("alice", "secret")).result == LIMITED  # even the right one
        assert (await client.login("ALICE", "secret")).result == LIMITED  # same name key
        assert accounts_of(server).statistics().hashes == hashes  # no hash was spent
        assert (await client.register("bob", "secret")).result == OK
        assert (await client.login("bob", "secret")).result == OK  # other names unaffected


async def test_failed_logins_per_address_are_rate_limited(store_url: str) -> None:
    config = accounts_config(store_url, accounts__max_failures_per_address=4)
    async with serve_in_memory(config) as server:
        guesser = await server.connect(peer="10.0.0.1:4000")
        for i in range(4):
            assert (await guesser.login(f"user{i}", "guess")).result == REJECTED
        hashes = accounts_of(server).statistics().hashes
        assert (await guesser.login("user9", "guess")).result == LIMITED
        same_host = await server.connect(peer="10.0.0.1:4001")
        assert (await same_host.login("user8", "guess")).result == LIMITED
        assert accounts_of(server).statistics().hashes == hashes
        other = await server.connect(peer="10.0.0.2:4000")
        assert (await other.register("carol", "pw")).result == OK
        assert (await other.login("carol", "pw")).result == OK


async def test_registrations_per_address_are_rate_limited(store_url: str) -> None:
    config = accounts_config(store_url, accounts__max_registrations_per_address=2)
    async with serve_in_memory(config) as server:
        client = await server.connect(peer="10.0.0.1:4000")
        assert (await client.register("a1", "pw")).result == OK
        assert (await client.register("a2", "pw")).result == OK
        assert (await client.register("a3", "pw")).result == LIMITED
        assert (await client.login("a3", "pw")).result == REJECTED  # it was never created
        elsewhere = await server.connect(peer="10.0.0.2:4000")
        assert (await elsewhere.register("a3", "pw")).result == OK


async def test_two_workers_on_separate_store_connections_share_accounts(store_url: str) -> None:
    config = accounts_config(store_url, accounts__max_registrations_per_address=0)
    async with (
        serve_in_memory(config) as first,
        serve_in_memory(config) as second,
    ):
        assert accounts_of(first) is not accounts_of(second)
        a, b = await first.connect(), await second.connect()
        assert (await a.register("alice", "secret")).result == OK
        assert (await b.login("alice", "secret")).result == OK
        assert (await b.register("ALICE", "x")).result == REJECTED

        # Both race to register the same 20 names: each name is created exactly once.
        results: dict[str, list[int]] = {}

        async def register_all(server, tag: str) -> None:  # type: ignore[no-untyped-def]
            client = await server.connect()
            for i in range(20):
                reply = await client.register(f"race{i}", tag)
                results.setdefault(f"race{i}", []).append(reply.result)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(register_all, first, "one")
            nursery.start_soon(register_all, second, "two")
        assert {k: sorted(r) for k, r in results.items() if sorted(r) != [OK, REJECTED]} == {}


async def test_passwords_are_not_stored_in_clear(tmp_path: Path) -> None:
    path = tmp_path / "accounts.sqlite3"
    async with serve_in_memory(accounts_config(f"sqlite:///{path}")) as server:
        client = await server.connect()
        assert (await client.register("alice", "PlainTextSecret")).result == OK
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"alice" in raw and b"PlainTextSecret" not in raw
    with sqlite3.connect(path) as db:
        (stored,) = db.execute("SELECT password_hash FROM trioserver_accounts").fetchone()
    assert stored.startswith("$scrypt$ln=10,r=8,p=1$")


async def test_no_account_service_answers_server_unavailable() -> None:
    async with serve_in_memory(accounts_config("")) as server:
        assert server.worker.services.accounts is None
        client = await server.connect()
        assert (await client.register("alice", "secret")).result == UNAVAILABLE
        assert (await client.login("alice", "secret")).result == UNAVAILABLE
        assert (await client.login("", "secret")).result == INVALID
        await client.ping()  # answered (it raises if the connection was closed)...
        stats = server.worker.statistics()  # ...and the failures above kicked nothing
        assert (stats.connections_open, stats.handler_errors, stats.kicks_by_reason) == (1, 0, {})


async def test_given_services_accounts_are_used_and_left_open(store_url: str) -> None:
    config = accounts_config(store_url)
    service = AccountService.from_settings(config.accounts)
    await service.open()
    try:
        services = Services(config=config, accounts=service)
        async with serve_in_memory(config, services=services) as server:
            client = await server.connect()
            assert (await client.register("alice", "secret")).result == OK
        assert services.accounts is service  # not the worker's to close
        assert await service.store.get("alice") is not None
    finally:
        await service.aclose()


async def test_default_config_keeps_accounts_under_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m trioserver`` on defaults: a SQLite file in ./data, created on first use."""
    monkeypatch.chdir(tmp_path)
    config = accounts_config("sqlite:///data/accounts.sqlite3").replace(accounts__scrypt_n=16384)
    assert (
        config.accounts.url
        == accounts_config("memory:").replace(accounts=type(config.accounts)()).accounts.url
    )
    async with serve_in_memory(config) as server:
        assert not (tmp_path / "data").exists()  # nothing touched until it is needed
        client = await server.connect()
        assert (await client.register("alice", "secret")).result == OK
    assert (tmp_path / "data" / "accounts.sqlite3").is_file()
