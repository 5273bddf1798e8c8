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
  ``remote_dropped``) and a writer task per peer sends everything pending in one
  ``send_all``. A peer that is not there (not started yet, restarting) costs a
  failed connect, and what was pending for it is dropped, counted, and retried
  only for new messages after ``RETRY`` seconds.
- Only this user's processes may connect (``SO_PEERCRED``): an abstract socket
  has no file permissions.
- A worker that drains stops listening and closes the links into it, so the next
  worker of its slot can listen under the same name and the others reconnect to
  it. During a reload's overlap, messages for that slot reach the old worker.
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

__all__ = ["RETRY", "Mesh", "mesh_address", "mesh_supported"]

log = logging.getLogger("trioserver.hub")

_FRAME: Final = struct.Struct(">I")
#: Largest frame a link accepts (a members answer for a whole worker fits easily).
MAX_FRAME: Final = 64 << 20
#: Seconds before a peer that refused a connect is tried again.
RETRY: Final = 0.5
#: Seconds between attempts to listen while the previous worker of this slot still does.
LISTEN_RETRY: Final = 0.1
_RECEIVE: Final = 1 << 18


def mesh_supported() -> bool:
    return sys.platform.startswith("linux")


def mesh_address(instance: str, index: int) -> bytes:
    """The abstract socket name of worker ``index`` of server ``instance``."""
    return f"\0trioserver-hub-{instance}-{index}".encode()


class _Link:
    """The outgoing connection to one peer worker, and what waits to be sent on it."""

    def __init__(self, mesh: Mesh, peer: int) -> None:
        self.mesh = mesh
        self.peer = peer
        self.address = mesh_address(mesh.instance, peer)
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.wakeup = Wakeup()
        self.stream: trio.SocketStream | None = None
        self.down_until = -1.0

    def queue(self, message: bytes) -> bool:
        """Hand ``message`` to the writer; False if it was dropped (counted)."""
        size = len(message) + 4
        hub = self.mesh.hub
        if self.pending_bytes + size > self.mesh.max_pending_bytes or (
            self.stream is None and trio.current_time() < self.down_until
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
                if self.stream is None and not await self._connect():
                    continue
                assert self.stream is not None
                data = b"".join(self.pending)
                self.pending = []
                self.pending_bytes = 0
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await self._lost("its connection broke")
        finally:
            if self.stream is not None:
                await trio.aclose_forcefully(self.stream)

    async def _connect(self) -> bool:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.connect(self.address)
        except OSError as exc:
            sock.close()
            await self._lost(f"cannot connect ({exc.strerror})")
            return False
        self.stream = trio.SocketStream(sock)
        return True

    async def _lost(self, why: str) -> None:
        """Drop what was pending (counted); tell waiting members() calls not to wait."""
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)
            self.stream = None
        dropped = len(self.pending) // 2
        self.mesh.hub.remote_dropped += dropped
        self.pending = []
        self.pending_bytes = 0
        if trio.current_time() >= self.down_until:
            log.info("hub: worker %d is unreachable (%s)", self.peer, why)
        self.down_until = trio.current_time() + RETRY
        self.mesh._unreachable(self.peer)


class Mesh:
    """The hub's remote over the other workers of this machine (see the module docstring)."""

    def __init__(
        self,
        hub: Hub,
        peers: Sequence[int],
        *,
        members_timeout: float = 1.0,
        max_pending_bytes: int = 16 << 20,
    ) -> None:
        self.hub = hub
        self.instance = hub.instance
        self.index = hub.worker
        self.members_timeout = members_timeout
        self.max_pending_bytes = max_pending_bytes
        self._links = {peer: _Link(self, peer) for peer in peers if peer != hub.worker}
        self._listen_scope = trio.CancelScope()
        self._readers: set[trio.SocketStream] = set()
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
        """The worker drains: free the name for the next worker of this slot (see above)."""
        self._listen_scope.cancel()
        for stream in list(self._readers):
            stream.socket.close()  # the peers' writers see it break and reconnect later

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
                uid = os.getuid()
                while True:
                    conn, _ = await sock.accept()
                    creds = conn.getsockopt(
                        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
                    )
                    _, peer_uid, _ = struct.unpack("3i", creds)
                    if peer_uid != uid:
                        log.warning("hub: refused a mesh connection from uid %d", peer_uid)
                        conn.close()
                        continue
                    nursery.start_soon(self._read, trio.SocketStream(conn))
            finally:
                sock.close()

    async def _read(self, stream: trio.SocketStream) -> None:
        self._readers.add(stream)
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
                if link.queue(message):
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
