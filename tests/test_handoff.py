"""A reload's handoff between two workers in one process: real loopback clients
(port 0) and a real channel (a socketpair); clients never notice the move."""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
import struct
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from wsproto.events import BytesMessage, Ping

from trioserver.client import Client, ConnectionClosed
from trioserver.config import Address
from trioserver.connection import Connection
from trioserver.framer import PING, Packet, encode
from trioserver.handlers import Context, default_router
from trioserver.handlers.router import Router
from trioserver.handoff import HandoffCounts, HandoffSender
from trioserver.handoff_channel import (
    channel_pair,
    receive_ack,
    receive_connection,
    send_ack,
    send_connection,
)
from trioserver.handoff_record import ConnectionRecord
from trioserver.peer import Peer
from trioserver.reasons import CloseReason, HandoffKept, KickReason
from trioserver.worker import Worker

from .conftest import make_config
from .polling import wait_until
from .ws_client import WebSocketStream

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCM_RIGHTS")

LOOPBACK = (Address("127.0.0.1", 0),)
ECHO, LOGIN, WHOAMI, JOIN, BULK, COUNT, WHO_AM_I_ID, PUSH = range(100, 108)


@pytest.fixture(autouse=True)
def _no_error_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A handoff that goes wrong inside (a lifecycle bug, a lost fd) logs an error."""
    yield
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def app_router() -> Router:
    """Echo, a login without accounts, handlers that need the login, groups, bulk replies."""
    router = default_router()

    @router.route(ECHO)
    def echo(ctx: Context, packet: Packet) -> None:
        ctx.reply(ECHO, packet.body)

    @router.route(LOGIN)
    def login(ctx: Context, packet: Packet) -> None:
        ctx.user = packet.body.decode()
        ctx.reply(LOGIN, b"ok")

    @router.route(WHOAMI)
    def whoami(ctx: Context, packet: Packet) -> None:
        if ctx.user is None:
            ctx.kick("not logged in")
        else:
            ctx.reply(WHOAMI, ctx.user.encode())

    @router.route(JOIN)
    def join(ctx: Context, packet: Packet) -> None:
        ctx.join(packet.body.decode())
        ctx.reply(JOIN, b"joined")

    @router.route(BULK)
    def bulk(ctx: Context, packet: Packet) -> None:
        count, size = struct.unpack(">HH", packet.body)
        for i in range(count):
            ctx.reply(BULK, struct.pack(">I", i) + b"x" * size)

    @router.route(COUNT)
    def count(ctx: Context, packet: Packet) -> None:
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        ctx.reply(COUNT, str(ctx.state["n"]).encode())

    @router.route(WHO_AM_I_ID)
    def global_id(ctx: Context, packet: Packet) -> None:
        ctx.reply(WHO_AM_I_ID, ctx.global_id.encode())

    return router


class Reloads:
    """Generations of workers in one nursery: the first listens, each next one is
    handed the previous one's connections (``reload``), as a master's reload does."""

    def __init__(self, nursery: trio.Nursery, router: Router, **settings: Any) -> None:
        self.nursery = nursery
        self.router = router
        self.settings = {"connection__flood_check": False, **settings}
        self.workers: list[Worker] = []

    async def start(self, **settings: Any) -> Worker:
        index = len(self.workers)
        # Each listens on a port of its own (a master's workers share one): clients
        # connect to the first worker's.
        config = make_config(**{**self.settings, **settings}).replace(server__listen=LOOPBACK)
        worker = Worker(config, self.router, index=index, instance="t")
        await self.nursery.start(worker.serve)
        self.workers.append(worker)
        return worker

    @property
    def current(self) -> Worker:
        return self.workers[-1]

    @property
    def port(self) -> int:
        return self.workers[0].addresses[0][1]

    async def reload(self, **settings: Any) -> HandoffCounts:
        """Start the next worker and hand the current one's connections to it."""
        old = self.current
        return await self.hand_over(old, await self.start(**settings))

    async def hand_over(self, old: Worker, new: Worker) -> HandoffCounts:
        old_end, new_end = channel_pair()

        async def adopt() -> None:
            with new_end:
                await new.adopt_from(new_end)

        self.nursery.start_soon(adopt)
        with old_end:
            return await old.hand_over(old_end)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop(grace=0)


@asynccontextmanager
async def reloads(router: Router | None = None, **settings: Any) -> AsyncIterator[Reloads]:
    async with trio.open_nursery() as nursery:
        r = Reloads(nursery, router or app_router(), **settings)
        await r.start()
        try:
            yield r
        finally:
            r.stop()


async def connect(port: int) -> Client:
    return await Client.connect("127.0.0.1", port)


async def test_a_pinging_client_is_answered_by_the_new_worker_without_a_disconnect() -> None:
    async with reloads() as r, await connect(r.port) as client:
        await client.ping()
        old = r.current
        counts = await r.reload()
        assert (counts.moved, dict(counts.kept), counts.failed) == (1, {}, 0)
        await client.ping()
        old_stats, new_stats = old.statistics(), r.current.statistics()
        assert old_stats.packets_by_code[0] == 1 and new_stats.packets_by_code[0] == 1
        assert (old_stats.handoff_moved, new_stats.handoff_adopted) == (1, 1)
        assert old_stats.kicks_by_reason == new_stats.kicks_by_reason == {}
        assert new_stats.connections_open == 1


async def test_half_a_header_sent_before_the_handoff_is_answered_after_it() -> None:
    async with reloads() as r, await connect(r.port) as client:
        await client.ping()
        await client.send_raw(PING[:3])
        await trio.testing.wait_all_tasks_blocked(0.01)  # the old worker has read it
        await r.reload()
        await client.send_raw(PING[3:])
        assert await client.receive_packet() == Packet(0, b"")
        assert r.current.statistics().packets_by_code[0] == 1


async def test_whole_packets_the_old_worker_had_not_decoded_are_answered_in_order() -> None:
    async with reloads(server__inbox_size=4) as r, await connect(r.port) as client:
        await client.ping()
        await client.send_raw(b"".join(encode(ECHO, struct.pack(">I", i)) for i in range(500)))
        await r.reload()
        for i in range(500):
            assert await client.receive_packet() == Packet(ECHO, struct.pack(">I", i))
        await client.ping()


async def test_a_logged_in_connection_stays_logged_in_with_its_id() -> None:
    async with reloads() as r, await connect(r.port) as client:
        assert await client.request(LOGIN, b"alice") == Packet(LOGIN, b"ok")
        old_id = (await client.request(WHO_AM_I_ID)).body
        await r.reload()
        assert await client.request(WHOAMI) == Packet(WHOAMI, b"alice")  # no new login
        assert (await client.request(WHO_AM_I_ID)).body == old_id
        hub = r.current.hub
        assert hub.send_to_user("alice", PUSH, b"to alice")
        assert await client.receive_packet() == Packet(PUSH, b"to alice")
        assert hub.send_to_connection(old_id.decode(), PUSH, b"by id")
        assert await client.receive_packet() == Packet(PUSH, b"by id")


async def test_group_membership_survives_the_handoff() -> None:
    async with reloads() as r, await connect(r.port) as a, await connect(r.port) as b:
        assert await a.request(JOIN, b"room") == Packet(JOIN, b"joined")
        await b.ping()
        await r.reload()
        assert r.current.hub.publish("room", PUSH, b"news")
        assert await a.receive_packet() == Packet(PUSH, b"news")
        await b.ping()  # not a member: it got nothing before its pong
        assert [m.user for m in await r.current.hub.members("room")] == [None]


async def test_replies_not_yet_sent_arrive_after_the_move_in_order_exactly_once() -> None:
    async with reloads() as r:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the peer reads nothing
        await sock.connect(("127.0.0.1", r.port))
        async with Client(trio.SocketStream(sock)) as client:
            await client.ping()
            old = r.current
            (conn,) = old.connections()
            server_side = conn.transport.socket
            assert isinstance(server_side, socket.socket)
            server_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # fills soon
            await client.send(BULK, struct.pack(">HH", 100, 1000))
            await wait_until(lambda: old.statistics().outbox_bytes > 0)  # a writer waits
            counts = await r.reload()
            assert counts.moved == 1
            for i in range(100):
                body = struct.pack(">I", i) + b"x" * 1000
                assert await client.receive_packet() == Packet(BULK, body)
            await client.ping()  # and nothing else came before the pong


async def test_picklable_state_moves_and_other_state_reannounces() -> None:
    router = app_router()
    events: list[tuple[str, int, object]] = []

    @router.on_connect
    def hello(ctx: Context) -> None:
        events.append(("connect", ctx.hub.worker, None))

    @router.on_close
    def bye(ctx: Context, reason: KickReason | CloseReason | None) -> None:
        events.append(("close", ctx.hub.worker, reason))

    @router.route(200)
    def unpicklable(ctx: Context, packet: Packet) -> None:
        ctx.state["rows"] = (row for row in ())  # a generator does not pickle
        ctx.reply(200)

    async with reloads(router) as r, await connect(r.port) as keeps, await connect(r.port) as loses:
        assert (await keeps.request(COUNT)).body == b"1"
        assert (await loses.request(COUNT)).body == b"1"
        assert await loses.request(200) == Packet(200)
        with pytest.raises(TypeError):
            pickle.dumps(row for row in ())
        await r.reload()
        assert (await keeps.request(COUNT)).body == b"2"  # ctx.state came along
        assert (await loses.request(COUNT)).body == b"1"  # it stayed behind
        assert sorted(e for e in events if e[0] == "connect") == [
            ("connect", 0, None),
            ("connect", 0, None),
            ("connect", 1, None),  # only the one whose state stayed behind
        ]
        assert [e for e in events if e[0] == "close"] == [("close", 0, CloseReason.HANDED_OFF)]


async def test_200_connections_pinging_through_5_handoffs_lose_and_repeat_nothing() -> None:
    clients, handoffs, window = 200, 5, 4
    done = trio.Event()
    answered = [0] * clients

    async def pinging(index: int, client: Client) -> None:
        sent = got = 0
        while not done.is_set() or got < sent:
            while not done.is_set() and sent - got < window:
                await client.send(ECHO, struct.pack(">I", sent))
                sent += 1
            assert await client.receive_packet() == Packet(ECHO, struct.pack(">I", got))
            got += 1
        answered[index] = got
        await client.ping()

    async with reloads() as r:
        conns = [await connect(r.port) for _ in range(clients)]
        async with trio.open_nursery() as nursery:
            for i, client in enumerate(conns):
                nursery.start_soon(pinging, i, client)
            all_counts = []

            def echoed() -> bool:  # every client got answers from this worker
                return r.current.statistics().packets_by_code.get(ECHO, 0) > clients

            for _ in range(handoffs):
                await wait_until(echoed)
                all_counts.append(await r.reload())
            done.set()
        assert [c.moved for c in all_counts] == [clients] * handoffs
        assert all(c.failed == 0 and not c.kept for c in all_counts)
        assert min(answered) > 0
        stats = [w.statistics() for w in r.workers]
        assert sum(s.packets_by_code.get(ECHO, 0) for s in stats) == sum(answered)
        assert all(s.kicks_by_reason == {} for s in stats)
        assert r.current.statistics().connections_open == clients
        for client in conns:
            await client.aclose()


async def test_a_receiver_that_dies_mid_handoff_loses_nothing_it_acknowledged() -> None:
    """A relay stands for the new worker's end: it passes 5 connections on and their
    acks back, then takes a sixth and dies holding it, with the rest still queued."""
    async with reloads() as r:
        clients = [await connect(r.port) for _ in range(20)]
        for client in clients:
            await client.ping()
        old = r.current
        new = await r.start()
        old_end, relay_in = channel_pair()
        relay_out, new_end = channel_pair()

        async def relay() -> None:
            with relay_in, relay_out:
                for _ in range(5):
                    got = await receive_connection(relay_in)
                    assert got is not None
                    with got[0]:
                        await send_connection(relay_out, *got)
                    ack = await receive_ack(relay_out)
                    assert ack is not None and ack.adopted
                    await send_ack(relay_in, ack)
                got = await receive_connection(relay_in)
                assert got is not None
                got[0].close()  # dies holding the sixth: its copy of the socket goes

        async def adopt() -> None:
            with new_end:
                await new.adopt_from(new_end)

        r.nursery.start_soon(relay)
        r.nursery.start_soon(adopt)
        with old_end:
            counts = await old.hand_over(old_end)
        assert (counts.moved, counts.failed, dict(counts.kept)) == (5, 15, {})
        moved = closed = 0
        for client in clients:
            try:
                await client.ping()
                moved += 1
            except ConnectionClosed:
                closed += 1  # drained by the old worker: a clean close, nothing owed
            await client.aclose()
        assert (moved, closed) == (5, 15)
        await old.wait_stopped()
        assert new.statistics().handoff_adopted == 5
        assert old.statistics().handoff_failed == 15


async def test_a_full_pool_refuses_and_the_old_worker_drains_those() -> None:
    async with reloads() as r:
        clients = [await connect(r.port) for _ in range(5)]
        for client in clients:
            await client.ping()
        counts = await r.reload(server__max_connections=2)
        assert (counts.moved, dict(counts.kept), counts.failed) == (2, {"refused": 3}, 0)
        assert r.current.statistics().handoff_refused == 3
        outcomes = []
        for client in clients:
            try:
                await client.ping()
                outcomes.append("moved")
            except ConnectionClosed:
                outcomes.append("drained")
            await client.aclose()
        assert sorted(outcomes) == ["drained"] * 3 + ["moved"] * 2


async def test_a_websocket_connection_moves_and_http_connections_are_counted_as_kept() -> None:
    async with reloads(http__listen=LOOPBACK) as r:
        http_port = r.workers[0].http_addresses[0][1]
        stream = await WebSocketStream.connect(
            "127.0.0.1", http_port, origin=f"http://127.0.0.1:{http_port}"
        )
        async with Client(stream) as ws, await trio.open_tcp_stream("127.0.0.1", http_port) as http:
            await http.send_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await http.receive_some(65536)).startswith(b"HTTP/1.1 404")
            assert await ws.request(ECHO, b"before") == Packet(ECHO, b"before")
            packet = encode(ECHO, b"half")
            await ws.send_raw(packet[:5])  # half a packet, in a whole message
            frame = stream.ws.send(BytesMessage(packet[5:]))
            await stream.stream.send_all(frame[:4])  # the rest in a frame sent in half
            await trio.testing.wait_all_tasks_blocked(0.01)  # the old worker has read both
            counts = await r.reload()
            assert (counts.moved, dict(counts.kept)) == (1, {"http": 1})
            await stream.stream.send_all(frame[4:])
            assert await ws.receive_packet() == Packet(ECHO, b"half")
            assert await ws.request(ECHO, b"after") == Packet(ECHO, b"after")
            assert await http.receive_some(65536) == b""  # the idle keep-alive one closed


class _NoSocket:
    """A transport that is never used: the record round trip needs none."""

    lingers = False


def _connection(worker: Worker) -> Connection:
    slot = worker.pool.acquire()
    assert slot is not None
    return Connection(slot, _NoSocket(), Peer("10.0.0.7", 5000), worker.shared)  # type: ignore[arg-type]


def test_a_record_carries_times_as_remaining_seconds_and_state_pickled() -> None:
    old, new = Worker(make_config(), instance="t"), Worker(make_config(), index=1, instance="t")
    conn = _connection(old)
    conn.user, conn.flood_count, conn.last_packet_at = "alice", 3, 99.5
    conn.scope.deadline, conn.hard_deadline, conn.prelogin = 130.0, 400.0, False
    conn.app_state = {"n": 2}
    old.hub.opened(conn)
    old.hub.join(conn, "lobby")
    record = ConnectionRecord.decode(conn.handoff_record(b"\x00\x08", b"", now=100.0).encode())
    assert (record.heartbeat_remaining, record.hard_remaining, record.since_last_packet) == (
        30.0,
        300.0,
        0.5,
    )
    assert (record.user, record.groups, record.reannounce) == ("alice", ("lobby",), False)
    adopted = _connection(new)
    assert adopted.adopt_record(record, now=5000.0) is record
    assert (adopted.scope.deadline, adopted.hard_deadline, adopted.last_packet_at) == (
        5030.0,
        5300.0,
        4999.5,
    )
    assert (adopted.user, adopted.flood_count, adopted.app_state) == ("alice", 3, {"n": 2})
    assert adopted.global_id == conn.global_id != _connection(new).global_id


def test_state_that_does_not_pickle_or_unpickle_makes_on_connect_run_again() -> None:
    worker = Worker(make_config(), instance="t")
    conn = _connection(worker)
    conn.announced = True
    conn.app_state = {"rows": (row for row in ())}
    record = conn.handoff_record(b"", b"", now=0.0)
    assert (record.state, record.reannounce) == (None, True)
    garbage = attrs.evolve(record, state=b"not a pickle", reannounce=False)
    again = _connection(Worker(make_config(), index=1, instance="t")).adopt_record(garbage, 0.0)
    assert (again.state, again.reannounce) == (None, True)


async def test_a_connection_in_flight_cannot_be_kicked_by_the_old_worker() -> None:
    """Pushes past the outbox cap while its socket is on the way would kick it; the
    handoff holds it, so it moves all the same (those pushes are lost: at most once)."""
    async with reloads() as r, await connect(r.port) as client:
        old_id = (await client.request(WHO_AM_I_ID)).body.decode()
        old = r.current
        new = await r.start()
        old_end, relay_in = channel_pair()
        relay_out, new_end = channel_pair()

        async def relay() -> None:
            with relay_in, relay_out:
                got = await receive_connection(relay_in)
                assert got is not None
                for _ in range(500):  # over connection.max_pending_replies
                    old.hub.send_to_connection(old_id, PUSH, b"lost")
                with got[0]:
                    await send_connection(relay_out, *got)
                ack = await receive_ack(relay_out)
                assert ack is not None
                await send_ack(relay_in, ack)
                assert await receive_connection(relay_in) is None
                relay_out.shutdown(socket.SHUT_WR)

        async def adopt() -> None:
            with new_end:
                await new.adopt_from(new_end)

        r.nursery.start_soon(relay)
        r.nursery.start_soon(adopt)
        with old_end, trio.fail_after(10):  # a kick that applied would hang the handoff
            counts = await old.hand_over(old_end)
        assert (counts.moved, counts.failed) == (1, 0)
        await client.ping()  # the new worker's pong, and no push before it
        assert old.statistics().kicks_by_reason == {}


async def test_a_cancelled_handoff_gives_up_and_a_late_receiver_serves_nothing() -> None:
    """The old worker gives up with every connection sent and none acknowledged: it
    shuts the channel, so a receiver that reads the messages only now can ack none of
    them, serves none, and the old worker drains them all."""
    async with reloads() as r:
        clients = [await connect(r.port) for _ in range(3)]
        for client in clients:
            await client.ping()
        old = r.current
        new = await r.start()
        old_end, new_end = channel_pair()
        with old_end, trio.CancelScope() as scope:

            async def give_up() -> None:
                await trio.testing.wait_all_tasks_blocked(0.01)  # all sent, no ack
                scope.cancel()

            r.nursery.start_soon(give_up)
            await old.hand_over(old_end)
        assert scope.cancelled_caught
        with new_end:
            await new.adopt_from(new_end)
        assert (old.statistics().handoff_failed, new.statistics().handoff_adopted) == (3, 0)
        assert new.statistics().connections_open == 0
        for client in clients:
            with pytest.raises(ConnectionClosed):
                await client.ping()
            await client.aclose()


def _epoll_entries() -> set[tuple[int, int]]:
    """(fd, inode) of every file this process's epoll sets watch (Linux's fdinfo)."""
    entries = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/self/fdinfo/{name}") as info:
                lines = info.read().splitlines()
        except OSError:
            continue
        for line in lines:
            found = re.match(r"tfd:\s*(\d+).*\bino:([0-9a-f]+)", line)
            if found:
                entries.add((int(found[1]), int(found[2], 16)))
    return entries


async def test_the_old_worker_leaves_no_epoll_registration_for_a_moved_socket() -> None:
    """Closing one of two descriptors of a socket does not take it out of an epoll set
    (the kernel drops an entry only with the last one): the old worker must unregister
    it itself before it lets go."""
    async with reloads() as r, await connect(r.port) as client:
        await client.ping()
        (conn,) = r.current.connections()
        sock = conn.transport.socket
        assert isinstance(sock, socket.socket)
        old = (sock.fileno(), os.fstat(sock.fileno()).st_ino)
        assert old in _epoll_entries()  # its reader waits on it
        await r.reload()
        await client.ping()
        (moved,) = r.current.connections()
        new_sock = moved.transport.socket
        assert isinstance(new_sock, socket.socket)
        assert (new_sock.fileno(), old[1]) in _epoll_entries()  # the new worker's
        assert old not in _epoll_entries()


class _Stoppable:
    """What the sender asks of a connection when its turn comes (no socket, no worker)."""

    def __init__(self, reason: HandoffKept | None = None) -> None:
        self.reason = reason
        self.stopped = False
        self.resumed = False

    def handoff_reason(self) -> HandoffKept | None:
        return self.reason

    def begin_handoff(self) -> bool:
        self.stopped = True
        return True

    def resume(self) -> None:
        self.resumed = True


class _GoneChannel:
    """A channel whose other end has gone: nothing is sent in this test."""

    def shutdown(self, how: int) -> None:
        raise OSError("gone")


def test_the_sender_stops_connections_in_turns_and_counts_what_stays() -> None:
    sender = HandoffSender(_GoneChannel(), at_once=2)  # type: ignore[arg-type]
    conns = [_Stoppable() for _ in range(4)] + [_Stoppable(HandoffKept.NEW)]
    sender.offer(conns)  # type: ignore[arg-type]
    sender._stop_more()
    assert [c.stopped for c in conns] == [True, True, False, False, False]
    sender.kept(conns[0], HandoffKept.FINISHING)  # type: ignore[arg-type]  # it ended
    sender.ready(conns[1], b"", b"")  # type: ignore[arg-type]  # ready: held, still a turn
    sender._stop_more()
    assert [c.stopped for c in conns] == [True, True, True, False, False]
    assert sender.holds(conns[1]) and not sender.holds(conns[2])  # type: ignore[arg-type]
    sender.kept(conns[2], HandoffKept.CLOSED)  # type: ignore[arg-type]
    sender._stop_more()  # the fourth's turn
    assert [c.stopped for c in conns] == [True, True, True, True, False]
    assert sender.counts(0.0).kept == {"finishing": 1, "closed": 1}
    sender.kept(conns[3], HandoffKept.FINISHING)  # type: ignore[arg-type]
    sender._stop_more()  # the fifth's turn: it cannot move, and is counted
    assert sender.counts(0.0).kept == {"finishing": 2, "closed": 1, "new": 1}
    assert not conns[4].stopped and not sender.done
    sender._finish()  # given up: the ready one drains here
    assert [c.resumed for c in conns] == [False, True, False, False, False]
    assert sender.counts(0.0).failed == 1 and sender.done


async def test_a_websocket_that_left_the_fast_path_is_kept_and_drained_with_1001() -> None:
    async with reloads(http__listen=LOOPBACK) as r:
        http_port = r.workers[0].http_addresses[0][1]
        stream = await WebSocketStream.connect(
            "127.0.0.1", http_port, origin=f"http://127.0.0.1:{http_port}"
        )
        async with Client(stream) as ws:
            await stream.stream.send_all(stream.ws.send(Ping(b"hi")))  # wsproto parses now
            assert await ws.request(ECHO, b"x") == Packet(ECHO, b"x")
            counts = await r.reload()
            assert (counts.moved, dict(counts.kept)) == (0, {"websocket": 1})
            assert await stream.receive_some() == b""
            assert stream.close is not None and stream.close.code == 1001  # the drain's


async def test_a_request_still_in_its_handler_is_answered_before_the_connection_moves() -> None:
    router = app_router()
    gate = trio.Event()

    @router.route(300)
    async def slow(ctx: Context, packet: Packet) -> None:
        await gate.wait()
        ctx.reply(300, b"done")

    async with reloads(router) as r, await connect(r.port) as client:
        await client.send(300)
        await client.send_raw(PING)  # read behind it, answered in order
        await trio.testing.wait_all_tasks_blocked(0.01)
        done: list[HandoffCounts] = []
        old, new = r.current, await r.start()

        async def reload() -> None:
            done.append(await r.hand_over(old, new))

        r.nursery.start_soon(reload)
        await trio.testing.wait_all_tasks_blocked(0.01)
        assert not done  # the handler holds it
        gate.set()
        assert await client.receive_packet() == Packet(300, b"done")
        assert await client.receive_packet() == Packet(0, b"")
        await client.ping()
        await trio.testing.wait_all_tasks_blocked(0.01)  # the hand over has returned
        assert done[0].moved == 1
        assert r.current.statistics().packets_by_code[0] == 1


async def test_pushes_from_another_worker_during_a_reload_are_held_not_dropped() -> None:
    # Worker 1 publishes all along while slot 2's connection moves from its old worker
    # to its new one: the mesh link to slot 2 holds what it cannot deliver between the
    # old worker's listening and the new one's. What lands while the connection itself
    # is in flight may be lost (at most once); nothing arrives twice or out of order,
    # nothing is dropped for the gap, and everything after the handoff arrives.
    instance = "m" + os.urandom(4).hex()
    config = make_config(connection__flood_check=False).replace(server__listen=LOOPBACK)

    def worker(index: int) -> Worker:
        return Worker(config, app_router(), index=index, instance=instance, peers=[1, 2])

    publisher, old, new = worker(1), worker(2), worker(2)
    async with trio.open_nursery() as nursery:
        r = Reloads(nursery, app_router())
        for w in (publisher, old, new):
            await nursery.start(w.serve)
        async with await connect(old.addresses[0][1]) as a:
            assert await a.request(JOIN, b"room") == Packet(JOIN, b"joined")
            sent = 0
            reloaded = trio.Event()

            async def publish() -> None:
                nonlocal sent
                while not reloaded.is_set() or sent < 200:
                    publisher.hub.publish("room", PUSH, b"%d" % sent)
                    sent += 1
                    await trio.sleep(0.001)  # pacing a steady stream, not waiting

            nursery.start_soon(publish)
            assert await a.receive_packet() == Packet(PUSH, b"0")
            await r.hand_over(old, new)
            after = sent
            reloaded.set()
            got = [0]
            with trio.fail_after(10):
                while got[-1] < 199 or got[-1] < sent - 1:
                    packet = await a.receive_packet()
                    assert packet.code == PUSH
                    got.append(int(packet.body))
        assert got == sorted(set(got))
        assert set(range(after + 1, sent)) <= set(got)
        assert publisher.hub.statistics().remote_dropped == 0
        for w in (publisher, old, new):
            w.stop(grace=0)
