"""The hub on a real Redis: two instances (two workers with their own bus), clients in memory;
Redis stopped and started again mid-test."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from examples import chat
from trioserver.bus import BusAddress, RedisBus
from trioserver.client import Client
from trioserver.framer import Packet
from trioserver.resp import NEED_DATA, RespError, RespParser, RespProtocolError, encode_command
from trioserver.testing import MemoryListener, memory_config
from trioserver.worker import Worker

from .redisserver import RedisServer


@asynccontextmanager
async def two_instances(url: str) -> AsyncIterator[list[tuple[Worker, MemoryListener]]]:
    config = memory_config(connection__flood_check=False, bus__url=url)
    pairs = []
    for _ in range(2):
        listener = MemoryListener()
        worker = Worker(config, chat.router, listeners=[listener], instance=secrets.token_hex(4))
        pairs.append((worker, listener))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for worker, _ in pairs:
                await nursery.start(worker.serve)
            for worker, _ in pairs:
                await bus_of(worker).connected.wait_value(True)
            try:
                yield pairs
            finally:
                for worker, _ in pairs:
                    worker.stop()


def bus_of(worker: Worker) -> RedisBus:
    remote = worker.hub.remote
    assert isinstance(remote, RedisBus)
    return remote


async def user(listener: MemoryListener, name: str) -> Client:
    client = Client(await listener.connect())
    await client.register(name, "pw")
    assert (await client.login(name, "pw")).result == 0
    return client


async def settled(worker: Worker) -> None:
    """One round trip on the bus's command connection: what was written before is done."""
    assert await worker.hub.members("chat:nothing") == []


async def test_chat_across_two_instances(redis_server: RedisServer) -> None:
    async with two_instances(redis_server.url) as [(w1, l1), (w2, l2)]:
        alice = await user(l1, "alice")
        bob = await user(l2, "bob")
        for client in (alice, bob):
            assert await client.request(chat.JOIN, b"lobby") == Packet(100, b"\0")
        await settled(w1)
        await settled(w2)
        assert await alice.request(chat.WHO, b"lobby") == Packet(106, b"alice\0bob")
        await alice.send(chat.SAY, b"lobby\0hi")
        heard = Packet(103, b"lobby\0alice\0hi")
        assert await alice.receive_packet() == heard
        assert await bob.receive_packet() == heard
        assert await bob.request(chat.TELL, b"alice\0psst") == Packet(104, b"\0")
        assert await alice.receive_packet() == Packet(105, b"bob\0psst")
        (bob_id,) = [m.connection_id for m in w2.hub.local_members("chat:lobby")]
        assert w1.hub.send_to_connection(bob_id, 105, b"direct")
        assert await bob.receive_packet() == Packet(105, b"direct")
        for i in range(300):  # order per sender and target
            w1.hub.publish("chat:lobby", 103, b"%d" % i)
        for i in range(300):
            assert await bob.receive_packet() == Packet(103, b"%d" % i)
            assert await alice.receive_packet() == Packet(103, b"%d" % i)
        await bob.aclose()
        while len(await w1.hub.members("chat:lobby")) != 1:
            await trio.sleep(0.01)


async def test_redis_stopped_and_started_again(redis_server: RedisServer) -> None:
    async with two_instances(redis_server.url) as [(w1, l1), (w2, l2)]:
        alice = await user(l1, "alice")
        carol = await user(l1, "carol")
        bob = await user(l2, "bob")
        for client in (alice, carol, bob):
            assert await client.request(chat.JOIN, b"lobby") == Packet(100, b"\0")
        await settled(w2)
        redis_server.stop()
        await bus_of(w1).connected.wait_value(False)
        # Fails fast, counted; the members on this worker still get it.
        before = w1.hub.statistics().remote_errors
        assert not w1.hub.publish("chat:lobby", 103, b"local only")
        assert w1.hub.statistics().remote_errors == before + 1
        assert await alice.request(chat.SAY, b"lobby\0still here") == Packet(103, b"local only")
        assert await alice.receive_packet() == Packet(103, b"lobby\0alice\0still here")
        assert await alice.receive_packet() == Packet(102, b"\4")  # not delivered beyond
        assert await carol.receive_packet() == Packet(103, b"local only")
        assert await carol.receive_packet() == Packet(103, b"lobby\0alice\0still here")
        assert await w1.hub.members("chat:lobby") == sorted(w1.hub.local_members("chat:lobby"))
        redis_server.start()
        for worker in (w1, w2):
            await bus_of(worker).connected.wait_value(True)
        await settled(w1)
        await settled(w2)
        assert w1.hub.publish("chat:lobby", 103, b"back")
        for client in (alice, bob, carol):
            assert await client.receive_packet() == Packet(103, b"back")
        assert await alice.request(chat.WHO, b"lobby") == Packet(106, b"alice\0bob\0carol")


def test_resp_round_trips_and_rejects_garbage() -> None:
    assert encode_command("SET", b"k", 1) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n"
    parser = RespParser()
    wire = b"+OK\r\n-ERR no\r\n:5\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\na\r\n:1\r\n"
    for i in range(len(wire)):  # byte by byte
        parser.feed(wire[i : i + 1])
    got = []
    while (reply := parser.next()) is not NEED_DATA:
        got.append(reply)
    assert got == ["OK", RespError("ERR no"), 5, b"abc", None, [b"a", 1]]
    assert isinstance(got[1], RespError)
    for bad in (b"?x\r\n", b"$999999999999\r\n", b":x\r\n", b"$1\r\nab\r\n"):
        parser = RespParser()
        parser.feed(bad)
        with pytest.raises(RespProtocolError):
            parser.next()
    assert BusAddress.parse("redis://h:7/2") == BusAddress("h", 7, 2)
    with pytest.raises(ValueError):
        BusAddress.parse("http://h")
