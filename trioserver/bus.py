"""The hub across machines: groups, user delivery and presence on a Redis server.

``[bus] url = "redis://HOST:PORT/DB"``. Each worker keeps two connections to
Redis: one for commands (``PUBLISH``, presence) and one subscribed to the
channels it has a reason to hear:

- ``ts:<db>:g:<group>`` while one of its connections is in ``group``;
- ``ts:<db>:u:<name>`` while one of its connections is logged in as ``name``;
- ``ts:<db>:w:<instance>-<worker>``, its own, for pushes to one connection id.

A message is the :mod:`~trioserver.hub_wire` message, behind the sender's
connection-id prefix so that a worker skips its own (it delivered those itself,
at once). Redis delivers a connection's publishes to each subscriber in order,
so the order per sender and target holds; pub/sub is at most once.

Presence is a hash per group, ``ts:<db>:m:<group>`` (connection id → user),
written on join and leave. A worker that dies cannot remove its entries, so each
worker also keeps ``ts:<db>:alive:<prefix>`` with a TTL (``ALIVE_TTL``, renewed
every third of it) and ``members`` ignores the entries of workers without one.

The client is a small RESP client on trio streams (:mod:`trioserver.resp`),
chosen over coredis (anyio on trio, a dependency tree of its own) and redis-py
(blocking, so one thread hop per publish) because the hub needs five commands,
pipelined without waiting, and full control of what happens when Redis goes
away. ``benchmarks/bus_bench.py`` (20,000 PUBLISH of 100 bytes, loaded 2-vCPU
VM): this client 95-118 k publishes/s at 5 CPU µs each; redis-py with one
``trio.to_thread`` hop per publish 1.3-2.4 k/s at 160-210 µs; coredis on trio,
awaiting each publish, 1.2-1.4 k/s at 210-220 µs. The others wait for each
reply (a publish a handler must not wait for), and batching them means a task
per publish or a pipeline object the hub would have to manage anyway.

Presence entries of connections that left while Redis was away stay until
their worker's alive key expires (the worker cannot tell which it wrote before).

Redis going away: the hub's calls return False at once (counted as
``remote_errors``, logged with a count), local delivery goes on, and the bus
reconnects by itself (``RECONNECT`` doubling up to ``RECONNECT_MAX`` seconds),
then subscribes again and rewrites this worker's presence. What was published
while it was away is lost (at most once).
"""

from __future__ import annotations

import collections
import logging
import urllib.parse
from collections.abc import Collection
from typing import Final

import attrs
import trio
from trio_util import AsyncBool

from .hub import Hub, Member, split_id
from .hub_wire import (
    HubWireError,
    ToConnection,
    ToGroup,
    ToUser,
    decode,
    encode_connection,
    encode_group,
    encode_user,
)
from .resp import NEED_DATA, Reply, RespError, RespParser, RespProtocolError, encode_command
from .wakeup import Wakeup

__all__ = ["ALIVE_TTL", "BusAddress", "RedisBus"]

log = logging.getLogger("trioserver.hub")

#: Seconds a worker's alive key lives without renewal (presence of a dead worker ends then).
ALIVE_TTL: Final = 10
#: First and longest wait between reconnect attempts, in seconds.
RECONNECT: Final = 0.1
RECONNECT_MAX: Final = 2.0
#: Seconds a connect (and its SELECT) may take.
CONNECT_TIMEOUT: Final = 2.0
_RECEIVE: Final = 1 << 18
#: What ends a session with Redis (and starts the reconnecting).
_LOST: Final = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    RespProtocolError,
    trio.TooSlowError,
)


@attrs.frozen
class BusAddress:
    host: str
    port: int
    db: int

    @classmethod
    def parse(cls, url: str) -> BusAddress:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            raise ValueError(f"expected 'redis://HOST:PORT/DB', got {url!r}")
        path = parts.path.strip("/")
        try:
            db = int(path) if path else 0
        except ValueError:
            raise ValueError(f"the database in {url!r} must be a number") from None
        return cls(parts.hostname, parts.port or 6379, db)


class _Pipe:
    """One Redis connection: bytes waiting to be written, and a writer for them."""

    def __init__(self, bus: RedisBus) -> None:
        self.bus = bus
        self.stream: trio.SocketStream | None = None
        self.parser = RespParser()
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.wakeup = Wakeup()

    def write(self, data: bytes) -> bool:
        if self.stream is None or self.pending_bytes + len(data) > self.bus.max_pending_bytes:
            return False
        self.pending.append(data)
        self.pending_bytes += len(data)
        self.wakeup.wake()
        return True

    async def writer(self) -> None:
        assert self.stream is not None
        while True:
            while not self.pending:
                await self.wakeup.wait()
            data = b"".join(self.pending)
            self.pending = []
            self.pending_bytes = 0
            await self.stream.send_all(data)

    async def reply(self) -> Reply:
        """The next reply on this connection (waits for it)."""
        stream = self.stream
        assert stream is not None
        parser = self.parser
        while (reply := parser.next()) is NEED_DATA:
            data = await stream.receive_some(_RECEIVE)
            if not data:
                raise trio.BrokenResourceError("Redis closed the connection")
            parser.feed(data)
        return reply  # type: ignore[return-value]


class RedisBus:
    """The hub's remote on Redis (see the module docstring)."""

    def __init__(
        self,
        hub: Hub,
        url: str,
        *,
        members_timeout: float = 1.0,
        max_pending_bytes: int = 16 << 20,
    ) -> None:
        self.hub = hub
        self.address = BusAddress.parse(url)
        self.members_timeout = members_timeout
        self.max_pending_bytes = max_pending_bytes
        self._space = f"ts:{self.address.db}:"
        origin = hub.prefix.encode()
        self._origin = bytes((len(origin),)) + origin
        self._own_channel = f"{self._space}w:{hub.instance}-{hub.worker}".encode()
        self._commands = _Pipe(self)
        self._subscriber = _Pipe(self)
        #: What each command written waits for: None (nothing), or a slot to fill.
        self._waiting: collections.deque[list[Reply] | None] = collections.deque()
        self._answered = Wakeup()
        #: True while both connections are up (``await bus.connected.wait_value(True)``).
        self.connected = AsyncBool(False)
        self.connects = 0
        hub.remote = self

    # -- the Remote face ------------------------------------------------------------------------

    def publish(self, group: str, data: bytes, exclude: Collection[str]) -> bool:
        return self._publish(f"{self._space}g:{group}", encode_group(group, data, exclude))

    def to_user(self, name: str, data: bytes) -> bool:
        return self._publish(f"{self._space}u:{name}", encode_user(name, data))

    def to_connection(self, connection_id: str, data: bytes) -> bool:
        parts = split_id(connection_id)
        if parts is None:
            return False
        channel = f"{self._space}w:{parts[0]}-{parts[1]}"
        return self._publish(channel, encode_connection(connection_id, data))

    async def members(self, group: str) -> list[Member] | None:
        if not self.connected.value:
            return None
        slot = self._command(b"HGETALL", f"{self._space}m:{group}", want=True)
        if slot is None:
            return None
        reply = await self._wait(slot)
        if not isinstance(reply, list):
            return None
        entries: list[tuple[str, str]] = []
        for i in range(0, len(reply) - 1, 2):
            cid, user = reply[i], reply[i + 1]
            if isinstance(cid, bytes) and isinstance(user, bytes):
                entries.append((cid.decode(), user.decode()))
        others = [(cid, user) for cid, user in entries if not cid.startswith(self.hub.prefix)]
        prefixes = sorted({cid.rsplit("-", 2)[0] for cid, _ in others})
        if not prefixes:
            return []
        alive_slot = self._command(
            b"MGET", *(f"{self._space}alive:{p}" for p in prefixes), want=True
        )
        alive_reply = await self._wait(alive_slot) if alive_slot is not None else None
        if not isinstance(alive_reply, list):
            return None
        alive = {p for p, v in zip(prefixes, alive_reply, strict=False) if v is not None}
        return [Member(cid, user or None) for cid, user in others if cid.rsplit("-", 2)[0] in alive]

    def joined(self, group: str) -> None:
        self._subscriber.write(encode_command(b"SUBSCRIBE", f"{self._space}g:{group}"))

    def left(self, group: str) -> None:
        self._subscriber.write(encode_command(b"UNSUBSCRIBE", f"{self._space}g:{group}"))

    def user_here(self, name: str, present: bool) -> None:
        verb = b"SUBSCRIBE" if present else b"UNSUBSCRIBE"
        self._subscriber.write(encode_command(verb, f"{self._space}u:{name}"))

    def member(self, group: str, connection_id: str, user: str | None, present: bool) -> None:
        key = f"{self._space}m:{group}"
        if present:
            self._command(b"HSET", key, connection_id, user or "")
        else:
            self._command(b"HDEL", key, connection_id)

    # -- commands -------------------------------------------------------------------------------

    def _publish(self, channel: str, message: bytes) -> bool:
        if not self.connected.value:
            return False
        if self._command(b"PUBLISH", channel, self._origin + message) is None:
            self.hub.remote_dropped += 1
            return True  # the bus is up but this worker has too much waiting: dropped, counted
        self.hub.remote_sent += 1
        return True

    def _command(self, *args: bytes | str, want: bool = False) -> list[Reply] | None:
        """Write one command; the slot its reply will fill (``want``), or None if not written."""
        if not self._commands.write(encode_command(*args)):
            return None
        slot: list[Reply] | None = [] if want else None
        self._waiting.append(slot)
        return slot if want else []

    async def _wait(self, slot: list[Reply]) -> Reply:
        with trio.move_on_after(self.members_timeout):
            while not slot:
                if not self.connected.value:
                    return None
                await self._answered.wait()
            return slot[0]
        return None

    # -- running --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the bus connected until cancelled (``started`` at once: a worker serves
        its own connections whether or not Redis is there)."""
        task_status.started()
        delay = RECONNECT
        where = f"{self.address.host}:{self.address.port}"
        while True:
            try:
                await self._session()
            except _LOST as exc:
                why = str(exc) or type(exc).__name__
            was_up = self.connected.value
            if was_up or self.connects == 0 or delay == RECONNECT:
                log.warning(
                    "hub: Redis at %s unavailable (%s); pushes reach this worker only "
                    "until it is back; retrying",
                    where,
                    why,
                )
            self._down()
            # Back off while Redis stays away; a session that was up starts over.
            delay = RECONNECT if was_up else delay
            await trio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    def _down(self) -> None:
        self.connected.value = False
        for pipe in (self._commands, self._subscriber):
            pipe.stream = None
            pipe.pending = []
            pipe.pending_bytes = 0
        self._waiting.clear()
        self._answered.wake()

    async def _open(self) -> trio.SocketStream:
        with trio.fail_after(CONNECT_TIMEOUT):
            return await trio.open_tcp_stream(self.address.host, self.address.port)

    async def _session(self) -> None:
        commands = await self._open()
        try:
            subscriber = await self._open()
        except BaseException:
            commands.socket.close()
            raise
        try:
            self._commands.stream = commands
            self._subscriber.stream = subscriber
            self._commands.parser = RespParser()
            self._subscriber.parser = RespParser()
            with trio.fail_after(CONNECT_TIMEOUT):
                await commands.send_all(encode_command(b"SELECT", self.address.db))
                reply = await self._commands.reply()
                if isinstance(reply, RespError):
                    raise RespProtocolError(f"SELECT {self.address.db}: {reply}")
            self._announce()
            self.connects += 1
            self.connected.value = True
            log.info("hub: connected to Redis at %s:%d", self.address.host, self.address.port)
            lost: BaseException | None = None
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._commands.writer)
                    nursery.start_soon(self._subscriber.writer)
                    nursery.start_soon(self._read_replies)
                    nursery.start_soon(self._read_messages)
                    nursery.start_soon(self._keep_alive)
            except* _LOST as group:
                lost = group.exceptions[0]
            if lost is not None:
                raise lost
        finally:
            commands.socket.close()  # no checkpoint: both close even when cancelled
            subscriber.socket.close()

    def _announce(self) -> None:
        """After a (re)connect: subscribe to what this worker needs, rewrite its presence."""
        hub = self.hub
        channels = [self._own_channel.decode()]
        channels += [f"{self._space}g:{g}" for g in hub.local_groups()]
        channels += [f"{self._space}u:{u}" for u in hub.local_users()]
        self._subscriber.write(encode_command(b"SUBSCRIBE", *channels))
        self._command(b"SET", f"{self._space}alive:{hub.prefix[:-1]}", b"1", b"EX", str(ALIVE_TTL))
        for group, members in hub.local_groups().items():
            for m in members:
                self._command(b"HSET", f"{self._space}m:{group}", m.connection_id, m.user or "")

    async def _keep_alive(self) -> None:
        key = f"{self._space}alive:{self.hub.prefix[:-1]}"
        while True:
            await trio.sleep(ALIVE_TTL / 3)
            self._command(b"SET", key, b"1", b"EX", str(ALIVE_TTL))

    async def _read_replies(self) -> None:
        while True:
            reply = await self._commands.reply()
            slot = self._waiting.popleft() if self._waiting else None
            if isinstance(reply, RespError):
                log.warning("hub: Redis refused a command: %s", reply)
            if slot is not None:
                slot.append(reply)
                self._answered.wake()

    async def _read_messages(self) -> None:
        hub = self.hub
        origin = self._origin
        for_me = len(origin)
        while True:
            reply = await self._subscriber.reply()
            if not isinstance(reply, list) or len(reply) != 3 or reply[0] != b"message":
                continue  # subscribe / unsubscribe confirmations
            payload = reply[2]
            if not isinstance(payload, bytes) or payload[:for_me] == origin:
                continue  # our own: delivered here already
            if not payload:
                continue
            try:
                message = decode(payload[1 + payload[0] :])
            except HubWireError as exc:
                log.error("hub: a bus message that does not parse (%s); ignored", exc)
                continue
            if type(message) is ToGroup or type(message) is ToUser or type(message) is ToConnection:
                hub.deliver(message)
