"""The hub across two workers of one machine: two real workers in one process, real Unix
sockets between them, clients in memory."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from examples import chat
from trioserver.client import Client
from trioserver.framer import Packet
from trioserver.hub_wire import (
    Answer,
    Ask,
    HubWireError,
    ToConnection,
    ToGroup,
    ToUser,
    decode,
    encode_answer,
    encode_ask,
    encode_connection,
    encode_group,
    encode_user,
)
from trioserver.mesh import mesh_supported
from trioserver.testing import MemoryListener, memory_config
from trioserver.worker import Worker

pytestmark = pytest.mark.skipif(not mesh_supported(), reason="abstract Unix sockets: Linux")

CONFIG = memory_config(connection__flood_check=False)


@asynccontextmanager
async def two_workers(
    config: object = CONFIG,
) -> AsyncIterator[list[tuple[Worker, MemoryListener]]]:
    instance = "t" + secrets.token_hex(4)
    pairs = []
    for index in (1, 2):
        listener = MemoryListener()
        worker = Worker(
            config, chat.router, listeners=[listener], index=index, instance=instance, peers=[1, 2]
        )  # type: ignore[arg-type]
        pairs.append((worker, listener))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for worker, _ in pairs:
                await nursery.start(worker.serve)
            try:
                yield pairs
            finally:
                for worker, _ in pairs:
                    worker.stop()


async def user(listener: MemoryListener, name: str, register: bool = True) -> Client:
    client = Client(await listener.connect())
    if register:
        await client.register(name, "pw")
    assert (await client.login(name, "pw")).result == 0
    return client


async def test_chat_across_two_workers() -> None:
    # Each worker has its own memory account store: register on each.
    async with two_workers() as [(w1, l1), (w2, l2)]:
        alice = await user(l1, "alice")
        bob = await user(l2, "bob")
        bob_again = await user(l1, "bob")
        for client in (alice, bob):
            assert await client.request(chat.JOIN, b"lobby") == Packet(100, b"\0")
        assert await bob.request(chat.WHO, b"lobby") == Packet(106, b"alice\0bob")
        await alice.send(chat.SAY, b"lobby\0hi")
        heard = Packet(103, b"lobby\0alice\0hi")
        assert await alice.receive_packet() == heard
        assert await bob.receive_packet() == heard
        assert await alice.request(chat.TELL, b"bob\0psst") == Packet(104, b"\0")
        assert await bob.receive_packet() == Packet(105, b"alice\0psst")
        assert await bob_again.receive_packet() == Packet(105, b"alice\0psst")
        # A connection on worker 2 reached by id from worker 1.
        (bob_id,) = [m.connection_id for m in await w2.hub.members("chat:lobby") if m.user == "bob"]
        assert w1.hub.send_to_connection(bob_id, 105, b"direct")
        assert await bob.receive_packet() == Packet(105, b"direct")
        # Closing leaves the group on every worker's view.
        await bob.aclose()
        with trio.fail_after(5):
            while len(await w1.hub.members("chat:lobby")) != 1:
                await trio.sleep(0.01)
        assert w1.hub.statistics().remote_dropped == 0


async def test_order_across_workers_and_encode_once() -> None:
    async with two_workers() as [(w1, _), (_, l2)]:
        members = [await user(l2, f"u{i}") for i in range(5)]
        for client in members:
            assert await client.request(chat.JOIN, b"room") == Packet(100, b"\0")
        for i in range(300):
            w1.hub.publish("chat:room", 103, b"%d" % i)
        for client in members:
            for i in range(300):
                assert await client.receive_packet() == Packet(103, b"%d" % i)
        assert w1.hub.statistics().remote_sent == 300  # one message per publish, not per member


async def test_members_does_not_wait_for_a_missing_worker() -> None:
    instance = "t" + secrets.token_hex(4)
    listener = MemoryListener()
    worker = Worker(
        CONFIG, chat.router, listeners=[listener], index=1, instance=instance, peers=[1, 2, 3]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        client = await user(listener, "alice")
        await client.request(chat.JOIN, b"r")
        start = trio.current_time()
        assert [m.user for m in await worker.hub.members("chat:r")] == ["alice"]
        assert trio.current_time() - start < CONFIG.bus.members_timeout
        worker.stop()


def test_hub_wire_round_trips_and_rejects_garbage() -> None:
    assert decode(encode_group("g", b"pkt", ["a-1.2-3-4"])) == ToGroup(
        "g", frozenset({"a-1.2-3-4"}), b"pkt"
    )
    assert decode(encode_user("ü", b"")) == ToUser("ü", b"")
    assert decode(encode_connection("x", b"p")) == ToConnection("x", b"p")
    assert decode(encode_ask(7, 2, "g")) == Ask(7, 2, "g")
    assert decode(encode_answer(7, 2, [("a", None), ("b", "bob")])) == Answer(
        7, 2, (("a", None), ("b", "bob"))
    )
    for bad in (b"", b"\x09", b"\x01\x00\x05ab", encode_answer(1, 1, [("a", "b")])[:-1]):
        with pytest.raises(HubWireError):
            decode(bad)
