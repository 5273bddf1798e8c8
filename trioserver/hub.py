"""The hub: push to any connection, user or group, on this worker and beyond.

::

    ctx.join("room:7")                                   # in a handler
    ctx.hub.publish("room:7", 103, body, exclude={ctx.global_id})
    ctx.hub.send_to_user("alice", 105, body)
    ctx.hub.send_to_connection(connection_id, 105, body)
    names = [m.user for m in await ctx.hub.members("room:7")]

Each worker has one hub (``worker.hub``, ``ctx.hub``). It knows its own
connections (by ``Connection.global_id``), the users logged in on them and
the groups they joined, and delivers to them straight into their outboxes. What
it cannot reach itself goes to its one *remote*: the other workers of this
machine (:mod:`trioserver.mesh`, the embedded default) or a bus shared by
several instances (``[bus] url``, :mod:`trioserver.bus`). Connection ids are
``instance-worker.process-slot-sequence`` (the process in hex), so a push to
one connection goes to exactly the worker that holds it, and an id never names
a connection of a later process of the same worker slot.

Delivery rules:

- **At most once.** A push is delivered once or not at all: what was in flight
  to a worker that crashed, or to a connection that closed meanwhile, is lost;
  nothing is duplicated. Between the workers of a machine a link that cannot
  reach its peer holds what waits and retries for a few seconds (a reload's
  gap loses nothing, :mod:`trioserver.mesh`); nothing else is retried.
- **In order per sender and target.** Pushes one task makes to one connection
  arrive in the order made, interleaved in order with that connection's replies
  (one outbox; one datagram socket or one bus connection between two workers).
- **Bounded, and never waiting.** ``publish`` and the ``send_to_*`` methods are
  plain functions: they queue into outboxes and hand bytes to the remote without
  waiting. A push obeys the outbox caps (``connection.max_pending_replies`` /
  ``max_pending_bytes``): a member that does not read is kicked
  (``send_queue`` / ``send_bytes``, counted as kicks) while the others go on
  receiving, so neither the publisher nor memory depends on the slowest member.
  What the remote cannot take at once is dropped and counted
  (``remote_dropped``); a remote that is down makes the call return False,
  counted (``remote_errors``) and logged, and local delivery goes on.
- **Encoded once.** A publish to N members encodes the packet once and queues
  the same bytes object in every member's outbox; it crosses to each other
  worker once, not once per member.
- **A connection leaves every group when it closes** (after ``on_close``).
- **A connection handed to a new worker on a reload keeps its id**: the new
  worker's hub answers to it (``Connection.moved_id``), and the old one lets it
  go without telling the remote it left its groups (it did not).

A push is queued with ``Outbox.send``, like a reply: it is sent at once (a
non-blocking send) unless that connection's outbox is holding a batch (its own
plain handlers are running), which it then joins. Sending at once rather than
on the next scheduler pass is what keeps a broadcast's latency down: the
first members get it while the publish still runs (``benchmarks/fanout_bench.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Protocol

import attrs

from .framer import encode
from .hub_wire import ToConnection, ToGroup, ToUser

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Hub", "HubStatistics", "Member", "Remote", "split_id"]

log = logging.getLogger("trioserver.hub")


@attrs.frozen(order=True)
class Member:
    """One connection in a group: its id, and its user once logged in."""

    connection_id: str
    user: str | None


@attrs.frozen
class HubStatistics:
    """A hub's counters (all only grow) and its sizes now."""

    groups: int
    users: int
    published: int
    delivered: int
    remote_sent: int
    remote_received: int
    remote_dropped: int
    remote_errors: int

    def counters(self) -> dict[str, int]:
        """The counters (not the sizes), for the worker's statistics report."""
        return {name: getattr(self, name) for name in _COUNTERS}


_COUNTERS = (
    "published",
    "delivered",
    "remote_sent",
    "remote_received",
    "remote_dropped",
    "remote_errors",
)


class Remote(Protocol):
    """Where a hub sends what its own connections are not enough for.

    Every method hands bytes over without waiting and returns False if the
    remote is down (the hub counts and logs it). ``data`` is an encoded packet.
    """

    def publish(self, group: str, data: bytes, exclude: Collection[str]) -> bool: ...
    def to_user(self, name: str, data: bytes) -> bool: ...
    def to_connection(self, connection_id: str, data: bytes) -> bool: ...
    async def members(self, group: str) -> list[Member] | None:
        """The members on the other workers; None if the remote is down."""
        ...

    def joined(self, group: str) -> None:
        """The first local member joined ``group`` (a bus subscribes)."""
        ...

    def left(self, group: str) -> None:
        """The last local member left ``group``."""
        ...

    def user_here(self, name: str, present: bool) -> None:
        """The first connection of ``name`` logged in here (True) / the last one left."""
        ...

    def member(self, group: str, connection_id: str, user: str | None, present: bool) -> None:
        """A connection joined ``group`` or changed its user (True), or left it (False)."""
        ...


def split_id(connection_id: str) -> tuple[str, int, int, int] | None:
    """``instance-worker.process-slot-sequence`` → (instance, worker, slot, sequence),
    or None if it is not one."""
    parts = connection_id.rsplit("-", 3)
    if len(parts) != 4:
        return None
    instance, worker, slot, sequence = parts
    try:
        return instance, int(worker.partition(".")[0]), int(slot), int(sequence)
    except ValueError:
        return None


class Hub:
    """One worker's connections, users and groups (see the module docstring)."""

    def __init__(self, instance: str = "local", worker: int = 0, process: int = 0) -> None:
        if not instance or "-" in instance:
            raise ValueError(f"instance must be a non-empty name without '-', got {instance!r}")
        self.instance = instance
        self.worker = worker
        #: What ``Connection.global_id`` starts with on this worker.
        self.prefix = f"{instance}-{worker}.{process:x}-"
        self.remote: Remote | None = None
        self._connections: dict[int, Connection] = {}  # slot index -> connection
        #: Connections handed over from another worker, by the id they brought.
        self._moved: dict[str, Connection] = {}
        self._groups: dict[str, dict[Connection, None]] = {}
        self._joined: dict[Connection, set[str]] = {}
        self._users: dict[str, dict[Connection, None]] = {}
        self._published = 0
        self._delivered = 0
        self._remote_errors = 0
        self.remote_sent = 0
        self.remote_received = 0
        self.remote_dropped = 0

    def statistics(self) -> HubStatistics:
        return HubStatistics(
            groups=len(self._groups),
            users=len(self._users),
            published=self._published,
            delivered=self._delivered,
            remote_sent=self.remote_sent,
            remote_received=self.remote_received,
            remote_dropped=self.remote_dropped,
            remote_errors=self._remote_errors,
        )

    # -- what connections tell it -------------------------------------------------------------

    def opened(self, conn: Connection) -> None:
        """``conn`` is open (``on_connect`` is about to fire): it can be pushed to."""
        self._connections[conn.slot.index] = conn
        if conn.moved_id is not None:
            self._moved[conn.moved_id] = conn
        if conn.user is not None:
            self._add_user(conn, conn.user)

    def closed(self, conn: Connection, *, moved: bool = False) -> None:
        """``conn`` closed: it leaves its groups and its user; nothing reaches it any more.

        ``moved``: it lives on in another worker under the same id, so the remote is
        not told that id left its groups."""
        if self._connections.get(conn.slot.index) is conn:
            del self._connections[conn.slot.index]
        if conn.moved_id is not None and self._moved.get(conn.moved_id) is conn:
            del self._moved[conn.moved_id]
        for group in self._joined.pop(conn, ()):
            self._remove(conn, group, announce=not moved)
        if conn.user is not None:
            self._remove_user(conn, conn.user)

    def set_user(self, conn: Connection, name: str | None) -> None:
        """``conn`` is now logged in as ``name`` (None: logged out)."""
        old = conn.user
        if old == name:
            return
        conn.user = name
        if self._connections.get(conn.slot.index) is not conn:
            return  # not open (yet): ``opened`` adds it
        if old is not None:
            self._remove_user(conn, old)
        if name is not None:
            self._add_user(conn, name)
        if self.remote is not None:
            for group in self._joined.get(conn, ()):
                self.remote.member(group, conn.global_id, name, True)

    def join(self, conn: Connection, group: str) -> bool:
        """Add ``conn`` to ``group``; False if it is closing (or was there already)."""
        if not isinstance(group, str) or not group:
            raise ValueError(f"a group is a non-empty str, got {group!r}")
        if conn.closing or self._connections.get(conn.slot.index) is not conn:
            return False
        members = self._groups.get(group)
        if members is None:
            members = self._groups[group] = {}
            if self.remote is not None:
                self.remote.joined(group)
        if conn in members:
            return False
        members[conn] = None
        self._joined.setdefault(conn, set()).add(group)
        if self.remote is not None:
            self.remote.member(group, conn.global_id, conn.user, True)
        return True

    def leave(self, conn: Connection, group: str) -> bool:
        """Take ``conn`` out of ``group``; False if it was not in it."""
        groups = self._joined.get(conn)
        if not groups or group not in groups:
            return False
        groups.discard(group)
        if not groups:
            del self._joined[conn]
        self._remove(conn, group)
        return True

    def groups_of(self, conn: Connection) -> frozenset[str]:
        return frozenset(self._joined.get(conn, ()))

    # -- pushes ---------------------------------------------------------------------------------

    def publish(
        self, group: str, code: int, body: bytes = b"", *, exclude: Iterable[str] = ()
    ) -> bool:
        """Push one packet to every member of ``group`` on every worker, but those whose
        connection id is in ``exclude``; False if the remote is down (local ones got it)."""
        data = encode(code, body)
        excluded = exclude if isinstance(exclude, frozenset | set) else frozenset(exclude)
        self._published += 1
        self.deliver_group(group, data, excluded)
        remote = self.remote
        if remote is None:
            return True
        return self._remote_ok(remote.publish(group, data, excluded), "publish", group)

    def send_to_user(self, name: str, code: int, body: bytes = b"") -> bool:
        """Push one packet to every connection logged in as ``name``, wherever it is."""
        data = encode(code, body)
        self._published += 1
        self.deliver_user(name, data)
        remote = self.remote
        if remote is None:
            return True
        return self._remote_ok(remote.to_user(name, data), "send_to_user", name)

    def send_to_connection(self, connection_id: str, code: int, body: bytes = b"") -> bool:
        """Push one packet to the connection with this id (``ctx.global_id``).

        True if it was queued here or handed to the worker that holds it; False
        if that connection is known to be gone, or the remote is down.
        """
        data = encode(code, body)
        self._published += 1
        if connection_id.startswith(self.prefix) or connection_id in self._moved:
            return self.deliver_connection(connection_id, data)
        remote = self.remote
        if remote is None or split_id(connection_id) is None:
            return False
        return self._remote_ok(remote.to_connection(connection_id, data), "send", connection_id)

    async def members(self, group: str) -> list[Member]:
        """Everyone in ``group`` on every worker (and instance), sorted by connection id.

        With the remote down, only this worker's members (counted, logged)."""
        found = self.local_members(group)
        remote = self.remote
        if remote is not None:
            others = await remote.members(group)
            if others is None:
                self._remote_ok(False, "members", group)
            else:
                found.extend(others)
        return sorted(found)

    # -- what the remote hands in ---------------------------------------------------------------

    def deliver(self, message: ToGroup | ToUser | ToConnection) -> None:
        """Deliver a message another worker or instance sent here (counted as received)."""
        self.remote_received += 1
        if type(message) is ToGroup:
            self.deliver_group(message.group, message.packet, message.exclude)
        elif type(message) is ToUser:
            self.deliver_user(message.name, message.packet)
        elif type(message) is ToConnection:
            self.deliver_connection(message.connection_id, message.packet)

    def deliver_group(self, group: str, data: bytes, exclude: Collection[str] = ()) -> int:
        """Queue ``data`` for this worker's members of ``group``; how many took it."""
        members = self._groups.get(group)
        if not members:
            return 0
        count = 0
        if exclude:
            skip = {self._resolve(connection_id) for connection_id in exclude}
            for conn in members:
                if conn not in skip and conn.outbox.send(data):
                    count += 1
        else:
            for conn in members:
                if conn.outbox.send(data):
                    count += 1
        self._delivered += count
        return count

    def deliver_user(self, name: str, data: bytes) -> int:
        conns = self._users.get(name)
        if not conns:
            return 0
        count = 0
        for conn in conns:
            if conn.outbox.send(data):
                count += 1
        self._delivered += count
        return count

    def deliver_connection(self, connection_id: str, data: bytes) -> bool:
        conn = self._resolve(connection_id)
        if conn is not None and conn.outbox.send(data):
            self._delivered += 1
            return True
        return False

    def local_members(self, group: str) -> list[Member]:
        return [Member(conn.global_id, conn.user) for conn in self._groups.get(group, ())]

    def local_groups(self) -> dict[str, list[Member]]:
        """Every group with members here, and them (a bus re-announces them on reconnect)."""
        return {group: self.local_members(group) for group in self._groups}

    def local_users(self) -> list[str]:
        return list(self._users)

    # -- bookkeeping ----------------------------------------------------------------------------

    def _resolve(self, connection_id: str) -> Connection | None:
        """This worker's open connection with that id, if any."""
        if not connection_id.startswith(self.prefix):
            return self._moved.get(connection_id)
        parts = split_id(connection_id)
        if parts is None:
            return None
        conn = self._connections.get(parts[2])
        if conn is None or conn.sequence != parts[3]:
            return None
        return conn

    def _remote_ok(self, ok: bool, what: str, target: str) -> bool:
        if ok:
            return True
        self._remote_errors += 1
        if self._remote_errors & (self._remote_errors - 1) == 0:  # 1st, 2nd, 4th, 8th...
            log.warning(
                "hub: %s to %r reached only this worker: the %s is unavailable "
                "(%d such errors so far; local delivery goes on)",
                what,
                target,
                type(self.remote).__name__,
                self._remote_errors,
            )
        return False

    def _remove(self, conn: Connection, group: str, *, announce: bool = True) -> None:
        members = self._groups.get(group)
        if members is None:
            return
        members.pop(conn, None)
        if self.remote is not None and announce:
            self.remote.member(group, conn.global_id, conn.user, False)
        if not members:
            del self._groups[group]
            if self.remote is not None:
                self.remote.left(group)

    def _add_user(self, conn: Connection, name: str) -> None:
        conns = self._users.get(name)
        if conns is None:
            conns = self._users[name] = {}
            if self.remote is not None:
                self.remote.user_here(name, True)
        conns[conn] = None

    def _remove_user(self, conn: Connection, name: str) -> None:
        conns = self._users.get(name)
        if conns is None:
            return
        conns.pop(conn, None)
        if not conns:
            del self._users[name]
            if self.remote is not None:
                self.remote.user_here(name, False)
