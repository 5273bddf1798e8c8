"""The hub on one worker: groups, users, connections, presence and the delivery rules."""

from __future__ import annotations

import struct

import trio

from trioserver.client import Client
from trioserver.framer import Packet, encode
from trioserver.handlers import Context, default_router
from trioserver.handlers.router import Router
from trioserver.hub import Hub, Member, split_id
from trioserver.reasons import KickReason
from trioserver.testing import StopReading, memory_config, serve_in_memory

CONFIG = memory_config(connection__flood_check=False)
JOIN, LEAVE, SAY, HEARD, WHOAMI = 100, 101, 102, 103, 104


def group_router() -> Router:
    router = default_router()

    @router.route(JOIN)
    def join(ctx: Context, packet: Packet) -> None:
        ctx.reply(JOIN, b"\0" if ctx.join(packet.body.decode()) else b"\1")

    @router.route(LEAVE)
    def leave(ctx: Context, packet: Packet) -> None:
        ctx.reply(LEAVE, b"\0" if ctx.leave(packet.body.decode()) else b"\1")

    @router.route(SAY)
    def say(ctx: Context, packet: Packet) -> None:
        group, _, text = packet.body.partition(b"\0")
        ctx.hub.publish(group.decode(), HEARD, text, exclude=[ctx.global_id])

    @router.route(WHOAMI)
    def whoami(ctx: Context, packet: Packet) -> None:
        ctx.reply(WHOAMI, ctx.global_id.encode())

    return router


async def joined(server: object, group: str, n: int) -> list[Client]:
    clients = []
    for _ in range(n):
        client = await server.connect()  # type: ignore[attr-defined]
        assert (await client.request(JOIN, group.encode())).body == b"\0"
        clients.append(client)
    return clients


async def test_publish_reaches_every_member_but_the_excluded(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serve_in_memory(CONFIG, group_router()) as server:
        a, b, c = await joined(server, "room", 3)
        outsider = await server.connect()
        await a.send(SAY, b"room\0hello")
        assert await b.receive_packet() == Packet(HEARD, b"hello")
        assert await c.receive_packet() == Packet(HEARD, b"hello")
        # The sender was excluded and the outsider is in no group: both get only their pings.
        await a.ping()
        await outsider.ping()
        assert (await b.request(LEAVE, b"room")).body == b"\0"
        assert (await b.request(LEAVE, b"room")).body == b"\1"
        await a.send(SAY, b"room\0again")
        assert await c.receive_packet() == Packet(HEARD, b"again")
        await b.ping()  # b left: nothing came before its pong
        hub = server.worker.hub
        assert hub.statistics().delivered == 3


async def test_a_closed_connection_leaves_its_groups(autojump_clock: trio.abc.Clock) -> None:
    async with serve_in_memory(CONFIG, group_router()) as server:
        a, b = await joined(server, "room", 2)
        b_id = (await b.request(WHOAMI)).body.decode()
        hub = server.worker.hub
        assert [m.connection_id for m in await hub.members("room")].count(b_id) == 1
        await b.aclose()
        await trio.sleep(1)
        members = await hub.members("room")
        assert len(members) == 1 and b_id not in {m.connection_id for m in members}
        await a.aclose()
        await trio.sleep(1)
        assert await hub.members("room") == []
        assert hub.statistics().groups == 0


async def test_send_to_user_reaches_all_its_connections_and_follows_a_relogin(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serve_in_memory(CONFIG, group_router()) as server:
        alice1, alice2, bob = [await server.connect() for _ in range(3)]
        await alice1.register("alice", "pw")
        await bob.register("bob", "pw")
        for client, name in ((alice1, "alice"), (alice2, "alice"), (bob, "bob")):
            assert (await client.login(name, "pw")).result == 0
        hub = server.worker.hub
        assert hub.send_to_user("alice", 105, b"for alice")
        assert await alice1.receive_packet() == Packet(105, b"for alice")
        assert await alice2.receive_packet() == Packet(105, b"for alice")
        assert (await alice2.login("bob", "pw")).result == 0  # alice2 is bob now
        hub.send_to_user("alice", 105, b"2")
        hub.send_to_user("bob", 105, b"3")
        assert await alice1.receive_packet() == Packet(105, b"2")
        assert await alice2.receive_packet() == Packet(105, b"3")
        assert await bob.receive_packet() == Packet(105, b"3")
        assert hub.statistics().users == 2


async def test_send_to_connection_by_id_and_a_stale_id(autojump_clock: trio.abc.Clock) -> None:
    async with serve_in_memory(CONFIG, group_router()) as server:
        a = await server.connect()
        a_id = (await a.request(WHOAMI)).body.decode()
        hub = server.worker.hub
        parts = split_id(a_id)
        assert parts is not None and parts[0] == hub.instance and parts[1] == 0
        assert hub.send_to_connection(a_id, 105, b"direct")
        assert await a.receive_packet() == Packet(105, b"direct")
        await a.aclose()
        await trio.sleep(1)
        assert not hub.send_to_connection(a_id, 105, b"too late")
        assert not hub.send_to_connection("not-an-id", 105)


async def test_pushes_and_replies_to_one_connection_keep_their_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serve_in_memory(CONFIG, group_router()) as server:
        (target,) = await joined(server, "room", 1)
        sender = await server.connect()
        wire = b"".join(encode(SAY, b"room\0" + struct.pack(">I", i)) for i in range(300))
        await sender.send_raw(wire)
        for i in range(300):
            assert await target.receive_packet() == Packet(HEARD, struct.pack(">I", i))


async def test_a_member_that_stops_reading_is_kicked_the_others_go_on(
    autojump_clock: trio.abc.Clock,
) -> None:
    config = CONFIG.replace(connection__max_pending_replies=50)
    async with serve_in_memory(config, group_router()) as server:
        readers = await joined(server, "room", 3)
        stalled = await server.connect(faults=[StopReading(at=1, window=1000)])
        assert (await stalled.request(JOIN, b"room")).body == b"\0"
        await trio.sleep(1)
        hub = server.worker.hub
        start = trio.current_time()
        for i in range(200):  # publish is a plain call: it cannot wait on the stalled member
            hub.publish("room", HEARD, struct.pack(">I", i) * 4)
            if i % 10 == 9:
                await trio.sleep(0.01)  # the readers read meanwhile
        assert round(trio.current_time() - start, 6) == 0.2
        for reader in readers:
            for i in range(200):
                assert await reader.receive_packet() == Packet(HEARD, struct.pack(">I", i) * 4)
        assert server.worker.statistics().kicks_by_reason == {KickReason.SEND_QUEUE.value: 1}
        assert len(await hub.members("room")) == 3


async def test_a_publish_encodes_once_for_every_member(autojump_clock: trio.abc.Clock) -> None:
    async with serve_in_memory(CONFIG, group_router()) as server:
        clients = await joined(server, "room", 5)
        hub = server.worker.hub
        conns = server.worker.connections()
        for conn in conns:  # hold the sends, as during a run of plain handlers
            conn.outbox.batching = True
        hub.publish("room", HEARD, b"x" * 100)
        queued = [conn.outbox._items[-1] for conn in conns]  # type: ignore[index]
        assert len(queued) == 5 and all(item is queued[0] for item in queued)
        for conn in conns:
            conn.outbox.batching = False
            conn.outbox.flush()
        for client in clients:
            assert await client.receive_packet() == Packet(HEARD, b"x" * 100)


async def test_members_name_the_users(autojump_clock: trio.abc.Clock) -> None:
    async with serve_in_memory(CONFIG, group_router()) as server:
        a, _ = await joined(server, "room", 2)
        await a.register("alice", "pw")
        await a.login("alice", "pw")
        members = await server.worker.hub.members("room")
        assert sorted(m.user or "" for m in members) == ["", "alice"]
        assert all(isinstance(m, Member) for m in members)


def test_hub_rejects_instance_names_that_break_ids() -> None:
    import pytest

    with pytest.raises(ValueError, match="instance"):
        Hub("a-b", 0)
    assert split_id("i-1.ff-2-3") == ("i", 1, 2, 3)
    assert split_id("i-1-x-3") is None


async def test_hub_counters_reach_the_worker_statistics(autojump_clock: trio.abc.Clock) -> None:
    from trioserver.stats import WorkerStatistics

    async with serve_in_memory(CONFIG, group_router()) as server:
        await joined(server, "room", 2)
        server.worker.hub.publish("room", HEARD, b"x")
        stats = server.worker.statistics()
        assert stats.hub["published"] == 1 and stats.hub["delivered"] == 2
        assert WorkerStatistics.from_json(stats.to_json()).hub == stats.hub
