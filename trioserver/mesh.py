"""The hub across the workers of one machine, with no other server: a mesh of Unix sockets.

Each worker listens on one abstract Unix stream socket named after the server
instance and its worker index (``\\0trioserver-hub-<instance>-<index>``) and
keeps one outgoing connection to each other worker, made when it first has
something to say. What the hub cannot deliver itself goes, as one
:mod:`~trioserver.hub_wire` message in a length-prefixed frame, to every other
worker (a publish, a user's delivery) or to the one named by a connection id.

Why direct and not through the master (measured, ``benchmarks/mesh_bench.py``,
100-byte messages in batches of 64 on this project's 2-vCPU VM: direct 1.2-3.2
M messages/s at 0.29-0.36 CPU µs each, through a poll-loop relay 0.43-0.80 M/s
at 0.84-0.95 µs): the master is a plain poll loop in Python; relaying puts
every message through two more system calls and that loop, which triples the
CPU per message, puts all cross-worker traffic of the machine on the master's
one core, and would stop it whenever the master is busy or stuck. Direct links
cost one write and one read per batch and spread over the workers' cores.

Why streams and not datagrams: an unconnected Unix datagram socket
queues at most ``net.unix.max_dgram_qlen`` (10 by default) datagrams, so a
burst of publishes would be dropped; a stream takes what its buffer holds, and
one connection per direction keeps each sender's order.

Rules:

- Nothing waits on a peer: a message is appended to that peer's pending bytes
  (at most ``bus.max_pending_bytes``; beyond that it is dropped and counted as
  ``remote_dropped``) and a writer task per peer sends everything pending at
  once. A peer that is not there (not started yet, a reload between its
  old and new worker, restarting) or whose link breaks keeps what waits for it,
  in order, and is tried again after 5 ms, doubling up to ``RETRY``; only after
  ``GIVE_UP`` seconds without it is that dropped and counted, and then each new
  message within ``RETRY`` of a failed connect too, until it answers again.
  Frames a broken link had not wholly sent go again; none twice.
- Only this user's processes may connect (``SO_PEERCRED``): an abstract socket
  has no file permissions.
- A worker that drains stops listening and shuts reading on the links into it
  (it still reads what they hold), so the next worker of its slot, which tries
  to listen every ``LISTEN_RETRY``, takes the name and the others reconnect to
  it. During a reload's overlap, messages for that slot reach the old worker;
  after it, the new one, which answers to the ids of the connections it adopted.
- ``hub.members`` asks every reachable worker and waits at most
  ``bus.members_timeout`` for the answers.

Linux only (abstract socket names); elsewhere a worker's hub reaches its own
connections only.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
from collections.abc import Collection, Sequence
from typing import Final

import trio

from .hub import Hub, Member, split_id
from .hub_wire import (
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
from .wakeup import Wakeup

__all__ = ["GIVE_UP", "RETRY", "Mesh", "mesh_address", "mesh_supported"]

log = logging.getLogger("trioserver.hub")

_FRAME: Final = struct.Struct(">I")
#: Largest frame a link accepts (a members answer for a whole worker fits easily).
MAX_FRAME: Final = 64 << 20
#: Seconds before the first retry of a connect that failed; each next wait doubles.
FIRST_BACKOFF: Final = 0.005
#: The longest wait between connects to an unreachable peer.
RETRY: Final = 0.5
#: Seconds a link holds what waits for a peer it cannot reach before dropping it.
#: A reload leaves a slot without a listener for one ``LISTEN_RETRY`` plus a scheduling
#: delay (tens of ms, under a second on a loaded 2-core machine); 5 s covers that many
#: times over and a worker restarted after a crash, while not keeping pushes minutes old.
GIVE_UP: Final = 5.0
#: Seconds between attempts to listen while the previous worker of this slot still does
#: (one failing bind each: cheap, and the slot's gap after a reload is at most this).
LISTEN_RETRY: Final = 0.02
_RECEIVE: Final = 1 << 18


def mesh_supported() -> bool:
    return sys.platform.startswith("linux")


def mesh_address(instance: str, index: int) -> bytes:
    """The abstract socket name of worker ``index`` of server ``instance``."""
    return f"\0trioserver-hub-{instance}-{index}".encode()


class _Link:
    """The outgoing connection to one peer worker, and what waits to be sent on it.

    ``pending`` holds frames as header, message, header, message, ... (no copy per
    message). While the peer cannot be reached the link keeps them and tries again
    after ``FIRST_BACKOFF`` doubling up to ``RETRY``, for ``give_up`` seconds; then it
    drops them (counted) and, until it connects again, drops each new message that
    comes within ``RETRY`` of a failed attempt.
    """

    def __init__(self, mesh: Mesh, peer: int) -> None:
        self.mesh = mesh
        self.peer = peer
        self.address = mesh_address(mesh.instance, peer)
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.wakeup = Wakeup()
        self.sock: trio.socket.SocketType | None = None
        #: When the current outage's first connect failed (None: not failing now).
        self.failing_since: float | None = None
        self.backoff = FIRST_BACKOFF
        #: After ``give_up``: no holding, new messages dropped until this time.
        self.given_up = False
        self.down_until = -1.0

    @property
    def reachable(self) -> bool:
        """Worth waiting for an answer from (connected, or not known to be away)."""
        return self.sock is not None or self.failing_since is None

    def queue(self, message: bytes) -> bool:
        """Hand ``message`` to the writer; False if it was dropped (counted)."""
        size = len(message) + 4
        hub = self.mesh.hub
        if self.pending_bytes + size > self.mesh.max_pending_bytes or (
            self.given_up and trio.current_time() < self.down_until
        ):
            hub.remote_dropped += 1
            return False
        self.pending.append(_FRAME.pack(len(message)))
        self.pending.append(message)
        self.pending_bytes += size
        hub.remote_sent += 1
        self.wakeup.wake()
        return True

    async def run(self) -> None:
        try:
            while True:
                while not self.pending:
                    await self.wakeup.wait()
                if self.sock is None and not await self._connect():
                    continue
                assert self.sock is not None
                batch = self.pending
                data = b"".join(batch)
                self.pending = []
                self.pending_bytes = 0
                sent = 0
                try:
                    with memoryview(data) as view:
                        while sent < len(data):
                            sent += await self.sock.send(view[sent:])
                except OSError as exc:
                    self._broken(batch, sent, exc)
        finally:
            if self.sock is not None:
                self.sock.close()

    def _broken(self, batch: list[bytes], sent: int, exc: OSError) -> None:
        """The link broke mid-batch: put back, in order, the frames not wholly sent.

        Whole frames before ``sent`` are in the peer's socket buffer, and a worker
        that stops listening reads its links to the end (``stop_listening``); a frame
        cut in two is discarded there, so it goes again whole."""
        assert self.sock is not None
        self.sock.close()
        self.sock = None
        done = 0
        for i in range(0, len(batch), 2):
            end = done + len(batch[i]) + len(batch[i + 1])
            if end > sent:
                rest = batch[i:]
                self.pending = rest + self.pending
                self.pending_bytes += sum(map(len, rest))
                break
            done = end
        log.debug("hub: the link to worker %d broke (%s); reconnecting", self.peer, exc.strerror)

    async def _connect(self) -> bool:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.connect(self.address)
        except OSError as exc:
            sock.close()
            await self._failed(exc.strerror or str(exc))
            return False
        if self.failing_since is not None or self.given_up:
            log.info("hub: worker %d is reachable again", self.peer)
        self.sock = sock
        self.failing_since = None
        self.given_up = False
        self.backoff = FIRST_BACKOFF
        return True

    async def _failed(self, why: str) -> None:
        """A connect failed: hold and back off, or (past ``give_up``) drop as counted."""
        now = trio.current_time()
        mesh = self.mesh
        mesh._unreachable(self.peer)
        if not self.given_up:
            if self.failing_since is None:
                self.failing_since = now
                self.backoff = FIRST_BACKOFF
                log.info("hub: worker %d is unreachable (%s); holding its messages", self.peer, why)
            left = self.failing_since + mesh.give_up - now
            if left > 0:
                await trio.sleep(min(self.backoff, left))
                self.backoff = min(self.backoff * 2, RETRY)
                return
            log.warning(
                "hub: worker %d unreachable for %.1f s; dropping what waits for it",
                self.peer,
                mesh.give_up,
            )
            self.given_up = True
        mesh.hub.remote_dropped += len(self.pending) // 2
        self.pending = []
        self.pending_bytes = 0
        self.down_until = now + RETRY


class Mesh:
    """The hub's remote over the other workers of this machine (see the module docstring)."""

    def __init__(
        self,
        hub: Hub,
        peers: Sequence[int],
        *,
        members_timeout: float = 1.0,
        max_pending_bytes: int = 16 << 20,
        give_up: float = GIVE_UP,
    ) -> None:
        self.hub = hub
        self.instance = hub.instance
        self.index = hub.worker
        self.members_timeout = members_timeout
        self.max_pending_bytes = max_pending_bytes
        self.give_up = give_up
        self._links = {peer: _Link(self, peer) for peer in peers if peer != hub.worker}
        self._listen_scope = trio.CancelScope()
        self._readers: set[trio.SocketStream] = set()
        self._listener: trio.socket.SocketType | None = None
        self._nursery: trio.Nursery | None = None
        self._asks: dict[int, tuple[set[int], list[Member], trio.Event]] = {}
        self._next_ask = 0
        hub.remote = self

    # -- running --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and keep the links until cancelled; ``started`` at once (listening may
        wait for the previous worker of this slot to let go of the name)."""
        async with trio.open_nursery() as nursery:
            for link in self._links.values():
                nursery.start_soon(link.run)
            nursery.start_soon(self._listen, nursery)
            task_status.started()

    def stop_listening(self) -> None:
        """The worker drains: free the name for the next worker of this slot (see above).

        The name is free when this returns. Connections the kernel had queued but this
        worker not yet accepted are taken first (they may already hold messages)."""
        self._listen_scope.cancel()
        listener, self._listener = self._listener, None
        if listener is not None and self._nursery is not None:
            with socket.socket(fileno=os.dup(listener.fileno())) as queued:
                queued.setblocking(False)
                while True:
                    try:
                        conn, _ = queued.accept()
                    except OSError:
                        break
                    self._adopt(trio.socket.from_stdlib_socket(conn), self._nursery)
        if listener is not None:
            listener.close()
        for stream in list(self._readers):
            # Shutting reading down makes the peers' next send fail (they reconnect, to
            # the next worker), while this reader still takes what is already buffered
            # and then sees the end: nothing sent to this worker is lost unread.
            try:
                stream.socket.shutdown(socket.SHUT_RD)
            except OSError:
                stream.socket.close()

    async def _listen(self, nursery: trio.Nursery) -> None:
        address = mesh_address(self.instance, self.index)
        with self._listen_scope:
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            waited = False
            try:
                while True:
                    try:
                        await sock.bind(address)
                        break
                    except OSError as exc:
                        if not waited:
                            log.info(
                                "hub: worker %d waits for its name (%s); the previous "
                                "worker of this slot still has it",
                                self.index,
                                exc.strerror,
                            )
                            waited = True
                        await trio.sleep(LISTEN_RETRY)
                sock.listen(128)
                self._listener = sock
                self._nursery = nursery
                while True:
                    conn, _ = await sock.accept()
                    self._adopt(conn, nursery)
            finally:
                self._listener = None
                sock.close()

    def _adopt(self, conn: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        """Read a link another worker opened, if it runs as this user."""
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, peer_uid, _ = struct.unpack("3i", creds)
        if peer_uid != os.getuid():
            log.warning("hub: refused a mesh connection from uid %d", peer_uid)
            conn.close()
            return
        stream = trio.SocketStream(conn)
        self._readers.add(stream)  # now, so that stop_listening sees it before it runs
        nursery.start_soon(self._read, stream)

    async def _read(self, stream: trio.SocketStream) -> None:
        buffer = b""
        try:
            while True:
                try:
                    data = await stream.receive_some(_RECEIVE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
                if not data:
                    return
                buffer = buffer + data if buffer else data
                pos = 0
                size = len(buffer)
                while size - pos >= 4:
                    (length,) = _FRAME.unpack_from(buffer, pos)
                    if length > MAX_FRAME:
                        log.error("hub: a mesh frame of %d bytes; closing that link", length)
                        return
                    end = pos + 4 + length
                    if end > size:
                        break
                    try:
                        self._handle(decode(buffer[pos + 4 : end]))
                    except HubWireError as exc:
                        log.error("hub: a mesh message that does not parse (%s); closing", exc)
                        return
                    pos = end
                buffer = buffer[pos:] if pos < size else b""
        finally:
            self._readers.discard(stream)
            await trio.aclose_forcefully(stream)

    def _handle(self, message: object) -> None:
        hub = self.hub
        if type(message) is ToGroup or type(message) is ToUser or type(message) is ToConnection:
            hub.deliver(message)
        elif type(message) is Ask:
            link = self._links.get(message.worker)
            if link is not None:
                here = [(m.connection_id, m.user) for m in hub.local_members(message.group)]
                link.queue(encode_answer(message.request, self.index, here))
        elif type(message) is Answer:
            ask = self._asks.get(message.request)
            if ask is not None:
                waiting, found, done = ask
                found.extend(Member(cid, user) for cid, user in message.members)
                waiting.discard(message.worker)
                if not waiting:
                    done.set()

    def _unreachable(self, peer: int) -> None:
        for waiting, _, done in self._asks.values():
            waiting.discard(peer)
            if not waiting:
                done.set()

    # -- the Remote face ------------------------------------------------------------------------

    def publish(self, group: str, data: bytes, exclude: Collection[str]) -> bool:
        message = encode_group(group, data, exclude)
        for link in self._links.values():
            link.queue(message)
        return True

    def to_user(self, name: str, data: bytes) -> bool:
        message = encode_user(name, data)
        for link in self._links.values():
            link.queue(message)
        return True

    def to_connection(self, connection_id: str, data: bytes) -> bool:
        parts = split_id(connection_id)
        if parts is None or parts[0] != self.instance:
            return False
        link = self._links.get(parts[1])
        return link is not None and link.queue(encode_connection(connection_id, data))

    async def members(self, group: str) -> list[Member] | None:
        self._next_ask += 1
        request = self._next_ask
        waiting: set[int] = set()
        found: list[Member] = []
        done = trio.Event()
        self._asks[request] = (waiting, found, done)
        message = encode_ask(request, self.index, group)
        try:
            for peer, link in self._links.items():
                if link.queue(message) and link.reachable:
                    waiting.add(peer)
            if waiting:
                with trio.move_on_after(self.members_timeout):
                    await done.wait()
        finally:
            del self._asks[request]
        return found

    def joined(self, group: str) -> None:
        pass  # every worker hears every publish: nothing to subscribe to

    def left(self, group: str) -> None:
        pass

    def user_here(self, name: str, present: bool) -> None:
        pass

    def member(self, group: str, connection_id: str, user: str | None, present: bool) -> None:
        pass  # members() asks the workers themselves
