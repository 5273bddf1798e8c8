"""Handing live connections to a new worker on a reload, and adopting them there.

::

    counts = await old_worker.hand_over(channel)      # stops accepting, moves, drains the rest
    nursery.start_soon(new_worker.adopt_from, channel) # in the new worker: serves what comes

The old worker's side is a :class:`HandoffSender`: the connections are told to
stop (``Connection.begin_handoff``) a few at a time, the others served as usual
until their turn; each reports back when it has stopped at a packet boundary with
its handlers done (``ready``) or when it will not move after all (``kept``). The
sender sends the ready ones over the channel (:mod:`trioserver.handoff_channel`:
the socket and its :class:`~trioserver.handoff_record.ConnectionRecord`), up to
``window`` awaiting their acks at once, and ends each with the receiver's answer:

- ``+`` ack: the new worker serves it; here it is forgotten (``moved``).
- ``-`` ack (the new worker's pool is full, or its network at its cap): it drains
  here, as a stopping worker's connections do (counted as kept, ``refused``).
- no ack because the channel ended or broke (the new worker died), or the hand
  over was cancelled: the sender shuts the channel (the receiver can then send no
  further ack, so it serves nothing more), reads the acks already sent, and drains
  the rest here (counted as ``failed``). Nothing acknowledged is lost and nothing
  is served twice: the receiver serves a connection only once its ack was sent,
  and the sender gives one up only once that ack is read.

The receiver's side is :func:`adopt`: for each message a pool slot (or a ``-`` ack),
the connection made again from its record, the ack, then its task.

What does not move drains as a stopping worker's connections do, counted by
reason in :class:`HandoffCounts`: ``tls`` (the session lives in this process's
``ssl`` object), ``http`` (requests in progress; idle keep-alive connections
close, which HTTP clients retry), ``new`` (its PROXY header or ``on_connect``
still to come), ``websocket`` (wsproto parses it, or a frame is half sent),
``closing`` (it was already ending), ``finishing`` / ``closed`` (it ended while
stopping: EOF, a rule, a kick), ``too_big`` (more than ``MAX_MESSAGE`` queued or
carried), ``transport`` (an in-memory link).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

import attrs
import trio

from .handoff_channel import (
    Ack,
    receive_ack,
    receive_ack_nowait,
    receive_connection,
    send_ack,
    try_send_connection,
)
from .handoff_counts import HandoffCounts
from .handoff_record import ConnectionRecord, HandoffRecordError
from .reasons import HandoffKept
from .transport import SocketTransport, Transport, movable
from .wakeup import Wakeup
from .ws_transport import WebSocketTransport

if TYPE_CHECKING:
    from .connection import Connection, Shared
    from .netcaps import NetworkCaps
    from .nursery_pool import ConnectionPool
    from .stats import Counters
    from .timers import RecycleTimer

__all__ = ["WINDOW", "HandoffCounts", "HandoffSender", "adopt"]

log = logging.getLogger("trioserver.worker")

#: Connections sent and not yet acknowledged at once: enough to keep both workers
#: busy, few enough that a broken channel leaves little to sort out.
WINDOW: Final = 64
_TASK_NAME: Final = "trioserver.connection"


@attrs.define(eq=False)
class _Ready:
    conn: Connection
    partial: bytes
    frames: bytes


class HandoffSender:
    """The old worker's side of one hand over (see the module docstring).

    ``offer`` the connections that are to move, then ``run``. They are stopped a
    few at a time (``at_once``, twice the window by default), the next as each is
    moved or kept: the others go on being served here meanwhile, so no connection
    waits longer than its own turn, however many there are. The stopped ones report
    through ``ready`` and ``kept`` (``connection.HandoffPort``).
    """

    def __init__(
        self, channel: socket.socket, *, window: int = WINDOW, at_once: int | None = None
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window!r}")
        self._channel = channel
        self._window = window
        self._at_once = 2 * window if at_once is None else at_once
        if self._at_once < 1:
            raise ValueError(f"at_once must be at least 1, got {at_once!r}")
        #: Offered and not yet stopped, in the order offered.
        self._waiting: collections.deque[Connection] = collections.deque()
        #: Told to stop and not yet ready.
        self._pending: set[Connection] = set()
        #: Ready or in flight: until the outcome, their fate is the hand over's.
        self._held: set[Connection] = set()
        self._ready: collections.deque[_Ready] = collections.deque()
        #: Sent, in the order sent (the receiver acks in that order), with their record.
        self._in_flight: collections.deque[tuple[Connection, ConnectionRecord]] = (
            collections.deque()
        )
        self.moved = 0
        self.failed = 0
        self.kept_by_reason: collections.Counter[str] = collections.Counter()
        self._wakeup = Wakeup()
        self._over = False

    # -- what the worker and the connections tell it ---------------------------------------

    def offer(self, conns: Iterable[Connection]) -> None:
        """Move these connections, if they still can when their turn comes."""
        self._waiting.extend(conns)

    def _stop_more(self) -> None:
        """Tell the next connections to stop, up to ``at_once`` stopped and unresolved."""
        waiting = self._waiting
        while waiting and len(self._pending) + len(self._held) < self._at_once:
            conn = waiting.popleft()
            reason = conn.handoff_reason()
            if reason is None and conn.begin_handoff():
                self._pending.add(conn)
            else:
                self.keep(reason or HandoffKept.CLOSING)

    def keep(self, reason: HandoffKept) -> None:
        """Count a connection that stays here for ``reason`` (never told to stop)."""
        self.kept_by_reason[reason.value] += 1

    def ready(self, conn: Connection, partial: bytes, frames: bytes) -> None:
        if conn not in self._pending:
            return
        self._pending.discard(conn)
        if self._over:
            self.failed += 1
            conn.resume()
            return
        self._held.add(conn)
        self._ready.append(_Ready(conn, partial, frames))
        self._wakeup.wake()

    def kept(self, conn: Connection, reason: HandoffKept) -> None:
        if conn in self._pending:
            self._pending.discard(conn)
            self.kept_by_reason[reason.value] += 1
            self._wakeup.wake()

    def holds(self, conn: Connection) -> bool:
        return conn in self._held

    def _moved(self, conn: Connection, record: ConnectionRecord) -> None:
        self._held.discard(conn)
        self.moved += 1
        conn.moved(record)

    def _resume(self, conn: Connection) -> None:
        self._held.discard(conn)
        conn.resume()

    @property
    def done(self) -> bool:
        """Every offered connection is moved or draining."""
        return not (self._waiting or self._pending or self._ready or self._in_flight)

    def counts(self, seconds: float) -> HandoffCounts:
        return HandoffCounts(self.moved, dict(self.kept_by_reason), self.failed, seconds)

    # -- the hand over -----------------------------------------------------------------------

    async def run(self) -> None:
        """Move every offered connection; returns once each is moved or draining.

        On return, and if cancelled, whatever is unresolved drains here (see the
        module docstring); the channel is shut for writing either way, so that the
        receiver's ``adopt`` ends.
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_acks, nursery.cancel_scope)
                await self._send_all()
                nursery.cancel_scope.cancel()
        finally:
            self._finish()

    async def _send_all(self) -> None:
        channel = self._channel
        while True:
            self._stop_more()
            if self.done or self._over:
                return
            if not self._ready or len(self._in_flight) >= self._window:
                await self._wakeup.wait()
                continue
            item = self._ready[0]
            conn = item.conn
            transport = movable(conn.transport)
            assert transport is not None
            sock = transport.handoff_socket()
            assert sock is not None  # checked when it stopped; nothing changes it since
            # Taken right before the send, without a checkpoint between: what the
            # outbox queued up to here moves with it.
            record = conn.handoff_record(item.partial, item.frames, trio.current_time())
            try:
                sent = try_send_connection(channel, sock, record)
            except ValueError:
                self._ready.popleft()
                self.kept_by_reason[HandoffKept.TOO_BIG.value] += 1
                self._resume(conn)
                continue
            except OSError as exc:
                log.warning("handoff channel broke while sending: %s", exc)
                self._over = True
                return
            if not sent:
                await trio.lowlevel.wait_writable(channel)
                continue
            self._ready.popleft()
            self._in_flight.append((conn, record))

    async def _read_acks(self, scope: trio.CancelScope) -> None:
        try:
            while True:
                ack = await receive_ack(self._channel)
                if ack is None:
                    log.warning(
                        "handoff channel ended with %d connections unacknowledged",
                        len(self._in_flight) + len(self._ready) + len(self._pending),
                    )
                    break
                if not self._resolve(ack):
                    break
        except (OSError, HandoffRecordError) as exc:
            log.warning("handoff channel broke while reading acks: %s", exc)
        self._over = True
        scope.cancel()

    def _resolve(self, ack: Ack) -> bool:
        """End the oldest connection in flight with ``ack``; False if it does not match."""
        if not self._in_flight:
            log.error("handoff: an ack for %r with nothing in flight", ack.connection_id)
            return False
        conn, record = self._in_flight[0]
        if ack.connection_id and ack.connection_id != record.connection_id:
            log.error(
                "handoff: ack for %r while %r was next", ack.connection_id, record.connection_id
            )
            return False
        self._in_flight.popleft()
        if ack.adopted:
            self._moved(conn, record)
        else:
            self.kept_by_reason[HandoffKept.REFUSED.value] += 1
            self._resume(conn)
        self._wakeup.wake()
        return True

    def _finish(self) -> None:
        """Settle what is unresolved (see ``run``); no checkpoint, so safe when cancelled."""
        channel = self._channel
        if not self.done:
            self._over = True
            with contextlib.suppress(OSError):
                channel.shutdown(socket.SHUT_RDWR)  # the receiver can send no further ack
            while self._in_flight:  # the acks it did send are still here to read
                try:
                    ack = receive_ack_nowait(channel)
                except (EOFError, OSError, HandoffRecordError):
                    break
                if ack is None or not self._resolve(ack):
                    break
            unresolved = [conn for conn, _ in self._in_flight]
            unresolved += [item.conn for item in self._ready]
            unresolved += self._pending
            self._in_flight.clear()
            self._ready.clear()
            self._pending.clear()
            self.failed += len(unresolved) + len(self._waiting)
            self._waiting.clear()  # never stopped: they drain with the rest
            for conn in unresolved:
                self._resume(conn)
        else:
            with contextlib.suppress(OSError):
                channel.shutdown(socket.SHUT_WR)  # the receiver reads the end


def _transport_for(sock: socket.socket, record: ConnectionRecord, shared: Shared) -> Transport:
    """The transport a handed-over socket is served with again."""
    base = SocketTransport(sock, shared.parking)
    if not record.websocket:
        return base
    return WebSocketTransport(
        base,
        record.frames,
        max_message=shared.websocket_max_message,
        subprotocol=record.subprotocol,
    )


async def adopt(
    channel: socket.socket,
    *,
    shared: Shared,
    pool: ConnectionPool,
    recycler: RecycleTimer,
    counters: Counters,
    caps: NetworkCaps | None,
) -> None:
    """Serve every connection another worker hands over on ``channel`` until it ends.

    Each gets a pool slot and is acknowledged before its task starts; one that
    finds the pool full (or its network at its cap) is refused: the sender keeps
    it and drains it. A record that does not decode is refused too.
    """
    nursery = shared.nursery
    while True:
        try:
            got = await receive_connection(channel)
        except HandoffRecordError as exc:
            log.warning("handoff: refused a message that is not a connection record: %s", exc)
            counters.handoff_refused += 1
            try:
                await send_ack(channel, Ack("", False))
            except OSError:
                return
            continue
        except OSError as exc:
            log.warning("handoff channel broke: %s", exc)
            return
        if got is None:
            return
        sock, record = got
        slot = None
        key = None
        gate = _Gate()
        try:
            if shared.stopping:
                raise _Refused("this worker is stopping")
            if caps is not None:
                key = caps.key(record.peer)
                if key is not None and not caps.admit(key):
                    key = None
                    raise _Refused("its network is at server.max_connections_per_network")
            slot = pool.acquire()
            if slot is None:
                raise _Refused("the pool is full (server.max_connections)")
            from .connection import Connection

            conn = Connection(slot, _transport_for(sock, record, shared), record.peer, shared)
            conn.cap_key = key
            record = conn.adopt_record(record, trio.current_time())
            # Its task starts first and waits for the gate: once the ack is out, the
            # connection must be served, and a nursery that has closed (the worker
            # stopped) can take no new task; it is refused while that can still be said.
            try:
                nursery.start_soon(_serve_adopted, conn, record, gate, name=_TASK_NAME)
            except RuntimeError:
                raise _Refused("this worker has stopped") from None
            await send_ack(channel, Ack(record.connection_id, True))
        except _Refused as why:
            counters.handoff_refused += 1
            log.info("handoff: refused %s (conn %s): %s", record.peer, record.connection_id, why)
            sock.close()  # the sender's copy keeps the connection; it drains there
            try:
                await send_ack(channel, Ack(record.connection_id, False))
            except OSError:
                return
            continue
        except BaseException as exc:
            # No ack went out (the sender is gone or gave up, or this task was
            # cancelled): the connection is still the sender's. Let it go here.
            if slot is not None:
                recycler.rest(slot)
            if key is not None and caps is not None:
                caps.release(key)
            sock.close()
            gate.open(adopted=False)
            if isinstance(exc, OSError):
                log.warning("handoff: no ack for %s: %s", record.connection_id, exc)
                return
            raise
        counters.handoff_adopted += 1
        shared.connections[slot.index] = conn
        conn.open_adopted(record)
        gate.open(adopted=True)


@attrs.define(eq=False)
class _Gate:
    """Whether an adopted connection's task is to serve it, once the ack is sent (or not)."""

    event: trio.Event = attrs.Factory(trio.Event)
    adopted: bool = False

    def open(self, *, adopted: bool) -> None:
        self.adopted = adopted
        self.event.set()


async def _serve_adopted(conn: Connection, record: ConnectionRecord, gate: _Gate) -> None:
    with trio.CancelScope(shield=True):  # the gate opens right after one send
        await gate.event.wait()
    if gate.adopted:
        await conn.serve(adopted=record)


class _Refused(Exception):
    pass
