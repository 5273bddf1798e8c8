"""examples/chat.py in memory: the wire format its docstring and the README promise."""

from __future__ import annotations

import trio

from examples import chat
from trioserver.client import Client
from trioserver.framer import Packet
from trioserver.testing import Bot, Outcome, memory_config, run_swarm, serve_in_memory

CONFIG = memory_config(connection__flood_check=False)


async def logged_in(server: object, name: str) -> Client:
    client: Client = await server.connect()  # type: ignore[attr-defined]
    await client.register(name, "pw")
    assert (await client.login(name, "pw")).result == 0
    return client


async def test_every_request_needs_a_login(autojump_clock: trio.abc.Clock) -> None:
    async with serve_in_memory(CONFIG, chat.router) as server:
        client = await server.connect()
        for code, body in [(100, b"r"), (101, b"r"), (102, b"r\0hi"), (104, b"u\0hi"), (106, b"r")]:
            assert await client.request(code, body) == Packet(code, b"\1")


async def test_join_say_leave_who(autojump_clock: trio.abc.Clock) -> None:
    async with serve_in_memory(CONFIG, chat.router) as server:
        alice = await logged_in(server, "alice")
        bob = await logged_in(server, "bob")
        carol = await logged_in(server, "carol")
        for client in (alice, bob):
            assert await client.request(chat.JOIN, b"lobby") == Packet(100, b"\0")
        assert await carol.request(chat.WHO, b"lobby") == Packet(106, b"alice\0bob")
        await alice.send(chat.SAY, "lobby\0héllo".encode())
        heard = Packet(103, "lobby\0alice\0héllo".encode())
        assert await alice.receive_packet() == heard  # the sender too
        assert await bob.receive_packet() == heard
        await carol.ping()  # carol is not in the room: only her pong
        assert await carol.request(chat.SAY, b"lobby\0x") == Packet(102, b"\2")  # not a member
        assert await bob.request(chat.LEAVE, b"lobby") == Packet(101, b"\0")
        assert await bob.request(chat.LEAVE, b"lobby") == Packet(101, b"\2")
        assert await carol.request(chat.WHO, b"lobby") == Packet(106, b"alice")
        await alice.aclose()
        await trio.sleep(1)
        assert await carol.request(chat.WHO, b"lobby") == Packet(106, b"")


async def test_tell_reaches_every_connection_of_the_user(autojump_clock: trio.abc.Clock) -> None:
    async with serve_in_memory(CONFIG, chat.router) as server:
        alice = await logged_in(server, "alice")
        bob1 = await logged_in(server, "bob")
        bob2 = await server.connect()
        await bob2.login("bob", "pw")
        assert await alice.request(chat.TELL, b"bob\0psst") == Packet(104, b"\0")
        assert await bob1.receive_packet() == Packet(105, b"alice\0psst")
        assert await bob2.receive_packet() == Packet(105, b"alice\0psst")
        assert await alice.request(chat.TELL, b"\0empty name") == Packet(104, b"\2")


async def test_bad_names_and_the_room_limit(autojump_clock: trio.abc.Clock) -> None:
    async with serve_in_memory(CONFIG, chat.router) as server:
        alice = await logged_in(server, "alice")
        for bad in (b"", b"x" * (chat.MAX_NAME + 1), b"\xff", b"a\0b"):
            assert await alice.request(chat.JOIN, bad) == Packet(100, b"\2")
        for i in range(chat.MAX_ROOMS):
            assert await alice.request(chat.JOIN, b"r%d" % i) == Packet(100, b"\0")
        assert await alice.request(chat.JOIN, b"r0") == Packet(100, b"\0")  # already in it
        assert await alice.request(chat.JOIN, b"one more") == Packet(100, b"\3")


async def test_a_swarm_chats_and_records_its_pushes(autojump_clock: trio.abc.Clock) -> None:
    async def script(bot: Bot) -> None:
        await bot.register()
        await bot.login()
        assert (await bot.request(chat.JOIN, b"lobby", reply=chat.JOIN)).body == b"\0"
        await bot.sleep(1)  # everyone has joined
        await bot.send(chat.SAY, b"lobby\0hi from " + bot.name.encode())
        for _ in range(20):
            packet = await bot.receive(chat.HEARD)
            assert packet.body.startswith(b"lobby\0bot")
        assert not bot.held()

    async with serve_in_memory(CONFIG, chat.router) as server:
        report = await run_swarm(server, script, bots=20, duration=5, push_codes=[chat.HEARD])
    assert report.outcomes() == {Outcome.FINISHED.value: 20}
    for bot in report.bots:
        assert bot.pushes == {chat.HEARD: 20}
        assert [e.kind for e in bot.events].count("push") == 20
