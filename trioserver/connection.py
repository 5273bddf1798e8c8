"""One connection, one object: its reader, its outbox, its lifecycle and its close.

::

    conn = Connection(slot, transport, peer, shared)
    nursery.start_soon(conn.serve)     # reads until EOF, a rule, a kick or the drain

The reader moves bytes from the transport through the framer and the checks
(CRC, size, flood, unknown codes) to the handlers: plain handlers run right in
the reader, async ones through the message queue. Replies leave through
``conn.outbox``. Everything a connection needs from its worker (rules,
counters, the queue, the nursery writers run in) is in one :class:`Shared`
record handed down at creation; a connection never calls back up into the
worker.

The lifecycle (:mod:`trioserver.lifecycle`) is one state moved through one
table; the reader makes the READING ⇄ IDLE moves itself on every wait (they are
always allowed from there, and a table lookup per wake-up costs).

``reason`` says why it ended: a :class:`KickReason` is counted as a kick; a
:class:`CloseReason` (the peer left, the drain closed it) is not; None means the
peer closed it and got every answer.

A reload hands a connection to a new worker (``Worker.hand_over``):
``begin_handoff`` moves it to HANDING_OFF and wakes its reader, which stops at
the next packet boundary. What it had read is handled here first (the packets
it had decoded; handlers finish and their replies join the outbox); bytes not
yet decoded move as bytes (a packet not yet whole, and whole ones the inbox
limit had left undecoded). The outbox stops (a waiting writer puts back what
did not go out) and only queues; the reader reports to ``shared.handoff`` and
waits. The handoff then takes ``handoff_record`` (deadlines as remaining
seconds, the flood state, the user, the groups, what is queued, ``ctx.state``
pickled) and the socket, and ends it with ``moved`` (this worker forgets the
connection without a word to the peer) or ``resume`` (it drains here). A new
worker makes the connection again with ``adopt_record`` and
``serve(adopted=record)``: the same id, user and groups, the queued bytes sent
first, the carried bytes decoded first. ``ctx.state`` that does not pickle stays
behind: this worker runs ``on_close`` (reason ``handed_off``) and the new one
``on_connect``.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Mapping
from typing import Any, Final, Protocol

import attrs
import trio

from .framer import (
    Discarded,
    Event,
    FrameDecoder,
    Packet,
    RemoteProtocolError,
    TruncatedPacketError,
)
from .handoff_record import ConnectionRecord
from .lifecycle import State, check_move
from .messages import MessageCode
from .netcaps import NetworkCaps
from .nursery_pool import Slot
from .outbox import DeferredFlusher, Outbox
from .parking import ReadParking
from .peer import Peer
from .proxy_protocol import ProxyPolicy, ProxyProtocolError, read_proxy_header
from .reasons import CloseReason, DropReason, HandoffKept, KickReason
from .stats import Counters
from .timers import ConnectionRules, RecycleTimer
from .transport import PeerProtocolError, Transport, linger, movable
from .wakeup import Wakeup
from .ws_transport import WebSocketTransport

__all__ = [
    "Checked",
    "Connection",
    "Dispatcher",
    "EventHooks",
    "HandoffPort",
    "HubHooks",
    "Shared",
    "Upgrade",
]

log = logging.getLogger("trioserver.worker")


# Module constants: reading an Enum member through its class costs ~200 ns on 3.11.
_NEW: Final = State.NEW
_READING: Final = State.READING
_IDLE: Final = State.IDLE
_FINISHING: Final = State.FINISHING
_CLOSING: Final = State.CLOSING
_CLOSED: Final = State.CLOSED
_HANDING_OFF: Final = State.HANDING_OFF
_MOVED: Final = State.MOVED
_PING: Final = int(MessageCode.PING)
#: One shared float: a connection made a float of its own for ``-math.inf`` otherwise.
_NEVER: Final = -math.inf

#: Seconds a draining worker waits for the first request of a connection that has
#: sent nothing yet (accepted just before the drain began) before closing it.
FIRST_REQUEST_GRACE: Final = 1.0


class Checked(Protocol):
    """What the reader checks of a message code's route before queueing a packet."""

    @property
    def body_size(self) -> int | None: ...


class Upgrade(Protocol):
    """A listener's step between the PROXY header and the protocol (the TLS handshake).

    Gets the plaintext transport and the bytes already read after the PROXY header;
    returns the transport to speak the protocol over, or None to refuse the
    connection (the upgrade counts and logs why).
    """

    async def __call__(
        self, transport: Transport, early: bytes, conn: Connection
    ) -> Transport | None: ...


class Dispatcher(Protocol):
    """What the reader hands checked packets to (the worker's message queue)."""

    def submit(self, conn: Connection, packets: list[Packet]) -> bool:
        """Run or queue ``packets``; True if ``conn`` must now be scheduled."""
        ...

    async def schedule(self, conn: Connection) -> None:
        """Put ``conn`` in the queue (waits while the queue is full)."""
        ...


class HubHooks(Protocol):
    """What a connection tells the worker's hub: it can be reached now, or no longer."""

    def opened(self, conn: Connection) -> None: ...

    def closed(self, conn: Connection, *, moved: bool = False) -> None: ...

    def join(self, conn: Connection, group: str) -> bool: ...

    def groups_of(self, conn: Connection) -> frozenset[str]: ...


class HandoffPort(Protocol):
    """Where a connection that is being handed over reports (``handoff.HandoffSender``)."""

    def ready(self, conn: Connection, partial: bytes, frames: bytes) -> None:
        """``conn`` stopped, its outbox holds; it waits for ``moved()`` or ``resume()``.
        ``partial``: the bytes read and not yet decoded; ``frames``: a WebSocket's raw
        frame bytes still arriving."""
        ...

    def kept(self, conn: Connection, reason: HandoffKept) -> None:
        """``conn`` will not move after all (it closed, finished, ...): it stays here."""
        ...

    def holds(self, conn: Connection) -> bool:
        """True from ``ready`` until ``moved()`` or ``resume()``: the connection's fate is
        the handoff's (a kick then does not apply; the new worker has the rules)."""
        ...


class EventHooks(Protocol):
    """The router's connection events, as a connection runs them."""

    @property
    def any_connect(self) -> bool: ...

    @property
    def any_close(self) -> bool: ...

    async def connected(self, conn: Connection) -> None: ...

    async def closed(self, conn: Connection) -> None: ...


@attrs.define(eq=False)
class Shared:
    """What every connection of one worker shares: its rules, counters and queue.

    Made once by the worker; ``nursery`` (where writer tasks run) is set when it
    serves, ``stopping`` when it drains.
    """

    rules: ConnectionRules
    counters: Counters
    queue: Dispatcher
    recycler: RecycleTimer
    routes: Mapping[int, Checked]
    flusher: DeferredFlusher
    proxy: ProxyPolicy | None = None
    #: Connections by client network (None: no cap). Behind a PROXY header a
    #: connection is counted here once the header names its client.
    caps: NetworkCaps | None = None
    max_packet_length: int = 29000
    receive_size: int = 65536
    inbox_size: int = 1024
    max_pending_replies: int = 400
    max_pending_bytes: int = 4 << 20
    #: Most payload bytes of one WebSocket message (``http.websocket_max_message``).
    websocket_max_message: int = 262144
    #: The open connections by slot index.
    connections: dict[int, Connection] = attrs.Factory(dict)
    stopping: bool = False
    #: The router's connection events (None: the router has none).
    events: EventHooks | None = None
    #: The worker's hub: groups, users, pushes (None: a bare reader, as some tests make).
    hub: HubHooks | None = None
    #: ``instance-worker.process-``: what makes ``Connection.global_id`` unique beyond
    #: this worker.
    id_prefix: str = "local-0.0-"
    #: The handoff under way (set once, by ``Worker.hand_over``; the worker is stopping).
    handoff: HandoffPort | None = None
    #: Where quiet readers of the worker's sockets wait (set as the worker serves; None:
    #: trio's own wait, as on a platform without epoll).
    parking: ReadParking | None = None
    _nursery: trio.Nursery | None = None

    @property
    def nursery(self) -> trio.Nursery:
        """Where writer tasks run: the worker's connection nursery, once it serves."""
        if self._nursery is None:
            raise RuntimeError("the worker is not serving yet")
        return self._nursery

    @nursery.setter
    def nursery(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery


class Connection:
    """One accepted connection (see the module docstring)."""

    __slots__ = (
        "announced",
        "app_state",
        "cap_key",
        "flood_count",
        "hard_deadline",
        "inbox",
        "last_packet_at",
        "logged_drops",
        "moved_id",
        "outbox",
        "peer",
        "prelogin",
        "reason",
        "scheduled",
        "scope",
        "sequence",
        "shared",
        "slot",
        "state",
        "transport",
        "upgrade",
        "user",
        "wakeup",
    )

    def __init__(
        self,
        slot: Slot,
        transport: Transport,
        peer: Peer,
        shared: Shared,
        upgrade: Upgrade | None = None,
    ) -> None:
        self.slot = slot
        #: The slot's sequence at open: once it moves on, this connection is stale.
        self.sequence = slot.sequence
        self.transport = transport
        #: Run once the PROXY header is read (a TLS listener's handshake), if any.
        self.upgrade = upgrade
        self.peer = peer
        self.shared = shared
        self.state = _NEW
        self.reason: KickReason | CloseReason | None = None
        #: The connection's whole life; a kick cancels it, the heartbeat is its deadline.
        self.scope = trio.CancelScope()
        #: Packets waiting for a handler task; a handler takes the whole list at once.
        self.inbox: list[Packet] = []
        #: True while the connection sits in the message queue or a handler drains it.
        self.scheduled = False
        self.outbox = Outbox(self)
        #: Wakes the reader (inbox space, or work finished); made when it first waits.
        self.wakeup: Wakeup | None = None
        #: Flood rule: arrival time of the previous packet and the fast-packet run length.
        self.last_packet_at = _NEVER
        self.flood_count = 0
        #: Hard session-lifetime deadline (inf when off); the heartbeat never extends past it.
        self.hard_deadline = math.inf
        #: True while the login deadline is the hard deadline (see timers.ConnectionRules).
        self.prelogin = False
        #: The network key ``shared.caps`` counts this connection under (released at close).
        self.cap_key: str | None = None
        #: Drop reasons already logged for this connection (each logged once).
        self.logged_drops: set[Any] | None = None
        #: The authenticated user, set by the login handler.
        self.user: str | None = None
        #: The application's own per-connection state (``Context.state``), made on first use.
        self.app_state: dict[str, Any] | None = None
        #: True once ``on_connect`` was fired: ``on_close`` then fires exactly once.
        self.announced = False
        #: The ``global_id`` it had in the worker that handed it over (None: made here).
        self.moved_id: str | None = None

    # -- what others ask -----------------------------------------------------------------------

    @property
    def id(self) -> str:
        """``slot#sequence``: unique among the worker's connections, stable in logs."""
        return f"{self.slot.index}#{self.sequence}"

    @property
    def global_id(self) -> str:
        """``instance-worker.process-slot-sequence``: unique across workers and instances (the hub's
        address for ``send_to_connection``); ``id`` stays the short one for logs. A
        connection handed over on a reload keeps the one it had."""
        moved = self.moved_id
        if moved is not None:
            return moved
        return f"{self.shared.id_prefix}{self.slot.index}-{self.sequence}"

    @property
    def stale(self) -> bool:
        """True once this connection closed (its slot's sequence moved on)."""
        return self.sequence != self.slot.sequence

    @property
    def closing(self) -> bool:
        """True once it is closing: nothing more will be sent."""
        state = self.state
        return state is _CLOSING or state is _CLOSED

    @property
    def busy(self) -> bool:
        """Something is still queued, being handled, or being sent."""
        return bool(self.scheduled or self.inbox or self.outbox)

    def __repr__(self) -> str:
        return f"<Connection {self.id} from {self.peer} {self.state.value}>"

    # -- what others tell it -------------------------------------------------------------------

    def kick(self, reason: KickReason) -> None:
        """Close now, replies still queued unsent; the first kick's reason is counted.

        Not while a handoff holds the connection (or after it moved): its socket may be
        the new worker's already, and nothing here may close it."""
        if self.closing or self.state is _MOVED or self._held():
            return
        self.reason = reason
        self._move(_CLOSING)
        self.scope.cancel()

    def logged_in(self) -> None:
        """A login succeeded: the login deadline no longer applies."""
        if self.prelogin:
            self.shared.rules.logged_in(self, trio.current_time())

    def peer_gone(self) -> None:
        """The peer reset or vanished: nothing more can be delivered (not a kick)."""
        if self.closing or self.state is _MOVED or self._held():
            return
        self.reason = CloseReason.PEER_GONE
        self._move(_CLOSING)
        self.scope.cancel()

    def settle(self) -> None:
        """Some work for this connection finished: wake its reader, and during a drain
        close it once it is idle with nothing in hand (a busy reader stops by itself)."""
        self._wake()
        if self.shared.stopping and self.state is _IDLE and not self.busy:
            self.reason = CloseReason.DRAINED
            self._move(_CLOSING)
            self.scope.cancel()

    def drain(self, now: float) -> None:
        """The worker is stopping (``shared.stopping`` is already set): finish."""
        if self.state is _NEW:
            # Accepted a moment ago, its first request perhaps on the way: closing
            # now would reset it. It gets a short grace, then closes quietly.
            self.reason = CloseReason.DRAINED
            self.scope.deadline = min(self.scope.deadline, now + FIRST_REQUEST_GRACE)
        else:
            self.settle()  # idle ones close now; busy ones once their work is done

    def _move(self, state: State) -> None:
        check_move(self.state, state)
        self.state = state

    def _held(self) -> bool:
        port = self.shared.handoff
        return self.state is _HANDING_OFF and port is not None and port.holds(self)

    # -- a reload's handoff (see the module docstring) -----------------------------------------

    def handoff_reason(self) -> HandoffKept | None:
        """Why this connection cannot move to another worker now; None: it can."""
        transport = self.transport
        if self.upgrade is not None or (
            isinstance(transport, WebSocketTransport) and movable(transport.lower) is None
        ):
            return HandoffKept.TLS  # the session's keys live in this process's ssl object
        state = self.state
        if state is not _READING and state is not _IDLE and state is not _NEW:
            return HandoffKept.CLOSED if state is _CLOSED else HandoffKept.CLOSING
        if not self.announced:
            return HandoffKept.NEW  # its PROXY header or on_connect is still to come
        moving = movable(transport)
        if moving is None:
            return HandoffKept.TRANSPORT
        if moving.handoff_socket() is None:
            return HandoffKept.WEBSOCKET  # wsproto parses it, or a frame is half sent
        return None

    def begin_handoff(self) -> bool:
        """Stop reading at the next packet boundary, for ``shared.handoff``; False
        (nothing changed) if :meth:`handoff_reason` says it cannot move."""
        if self.handoff_reason() is not None:
            return False
        self._move(_HANDING_OFF)
        transport = movable(self.transport)
        assert transport is not None
        transport.interrupt()  # a reader or writer waiting on the socket wakes
        return True

    def handoff_record(self, partial: bytes, frames: bytes, now: float) -> ConnectionRecord:
        """What the new worker needs to go on with this connection, as of now."""
        hub = self.shared.hub
        state: bytes | None = None
        reannounce = False
        if self.app_state is not None:
            try:
                state = pickle.dumps(self.app_state, pickle.HIGHEST_PROTOCOL)
            except Exception:
                reannounce = self.announced
        transport = self.transport
        ws = transport if isinstance(transport, WebSocketTransport) else None
        return ConnectionRecord(
            connection_id=self.global_id,
            peer=self.peer,
            user=self.user,
            heartbeat_remaining=self.scope.deadline - now,
            flood_count=self.flood_count,
            since_last_packet=now - self.last_packet_at,
            partial=partial,
            unsent=self.outbox.queued(),
            groups=() if hub is None else tuple(sorted(hub.groups_of(self))),
            hard_remaining=self.hard_deadline - now,
            prelogin=self.prelogin,
            state=state,
            reannounce=reannounce,
            websocket=ws is not None,
            subprotocol=None if ws is None else ws.subprotocol,
            frames=frames,
        )

    def moved(self, record: ConnectionRecord) -> None:
        """The new worker acknowledged ``record``: forget this connection here."""
        if record.reannounce:
            self.reason = CloseReason.HANDED_OFF  # on_close runs; on_connect runs there
        self._move(_MOVED)
        self._wake()

    def resume(self) -> None:
        """The handoff did not take this connection: it drains here."""
        if self.state is _HANDING_OFF:
            self._move(_FINISHING)
            self._wake()

    def adopt_record(self, record: ConnectionRecord, now: float) -> ConnectionRecord:
        """Take the state a handed-over connection had (before :meth:`serve`); the
        record to serve it with (``ctx.state`` that does not unpickle here is dropped,
        logged, and ``on_connect`` runs instead)."""
        self.moved_id = record.connection_id
        self.user = record.user
        self.flood_count = record.flood_count
        self.last_packet_at = now - record.since_last_packet
        self.prelogin = record.prelogin
        if record.hard_remaining < math.inf:
            self.hard_deadline = now + record.hard_remaining
        if record.heartbeat_remaining < math.inf:
            self.scope.deadline = now + record.heartbeat_remaining
        if record.state is not None:
            try:
                self.app_state = pickle.loads(record.state)
            except Exception as exc:
                log.warning(
                    "conn %s: ctx.state did not unpickle (%s); on_connect runs again",
                    record.connection_id,
                    exc,
                )
                return attrs.evolve(record, state=None, reannounce=True)
        return record

    def open_adopted(self, record: ConnectionRecord) -> None:
        """Open a handed-over connection (after :meth:`adopt_record`, once the old
        worker was told): its user and groups in the hub, the replies it was owed
        queued before anything this worker answers. Movable again from here on,
        even before its task first runs."""
        self._move(_READING)
        self.announced = True
        hub = self.shared.hub
        if hub is not None:
            hub.opened(self)  # with its user: send_to_user finds it
            for group in record.groups:
                hub.join(self, group)
        if record.unsent:
            self.outbox.send(record.unsent)

    async def _adopt(self, record: ConnectionRecord) -> bytes | None:
        """The bytes a handed-over connection carried, to decode first; ``on_connect``
        first if its state stayed behind (None: that closed it)."""
        events = self.shared.events
        if record.reannounce and events is not None and events.any_connect:
            await events.connected(self)
            if self.closing:
                return None
        return record.partial

    async def _hand_off(self, decoder: FrameDecoder) -> bool:
        """Finish what was read, stop the outbox and wait for the handoff: True once
        moved; False when it is to drain here (the outbox sends again)."""
        port = self.shared.handoff
        assert port is not None
        outbox = self.outbox
        while self.scheduled or self.inbox or outbox.writing:
            await self._wakeup().wait()  # handlers finish; a writer puts back what it did not send
            if self.state is not _HANDING_OFF:
                return False
        transport = movable(self.transport)
        assert transport is not None
        if transport.handoff_socket() is None:  # a WebSocket left the fast path meanwhile
            port.kept(self, HandoffKept.WEBSOCKET)
            self._move(_FINISHING)
            return False
        partial = decoder.buffered()
        frames = b""
        if isinstance(transport, WebSocketTransport):
            payload, frames = transport.handoff_frames()
            partial += payload
        outbox.hold()
        port.ready(self, partial, frames)
        # The handoff always ends with moved() or resume(); until then nothing here may
        # touch the socket (a deadline passing now is the new worker's to enforce).
        with trio.CancelScope(shield=True):
            while self.state is _HANDING_OFF:
                await self._wakeup().wait()
        if self.state is _MOVED:
            return True
        outbox.release()
        return False

    # -- the reader ----------------------------------------------------------------------------

    async def serve(
        self, *, proxy_header: bool = True, adopted: ConnectionRecord | None = None
    ) -> None:
        """Read, check and hand over until the connection ends; then close it.

        ``proxy_header=False``: no PROXY header comes first, whatever ``[server]``
        says (a WebSocket made on the HTTP port, which takes none). ``adopted``:
        another worker handed this connection over with this record (after
        :meth:`adopt_record`).

        The reader is inline here rather than in coroutines of its own because an
        idle connection is this task's frame and little else: every nested frame
        is paid for by every one of tens of thousands of idle connections.
        """
        shared = self.shared
        transport = self.transport
        if adopted is None:
            shared.rules.open(self, trio.current_time())
        decoder = FrameDecoder(shared.max_packet_length)
        receive_size = shared.receive_size
        inbox_size = shared.inbox_size
        queue = shared.queue
        waited = True
        peer_eof = False
        data: bytes | None
        events: list[Event] | None = None
        packets: list[Packet] | None = None
        clean = False
        try:
            with self.scope:
                early: bytes | None = b""
                if adopted is not None:
                    early = await self._adopt(adopted)
                else:
                    if shared.proxy is not None and proxy_header:
                        early = await self._proxy_header(shared.proxy)
                        if early is not None and shared.caps is not None:
                            early = self._count_network(shared.caps, early)
                    if self.upgrade is not None and early is not None:
                        early = await self._upgrade(self.upgrade, early)
                        transport = self.transport
                    if early is not None:
                        self.announced = True
                        if shared.hub is not None:
                            shared.hub.opened(self)
                        if shared.events is not None and shared.events.any_connect:
                            await shared.events.connected(self)
                            if self.closing:
                                early = None  # on_connect kicked it (or raised)
                while early is not None:  # bytes → packets → checks → handlers
                    if early:  # bytes that arrived with the PROXY header come first
                        data, early = early, b""
                    else:
                        try:
                            data = transport.receive_nowait(receive_size)
                            if data is None:
                                # Draining or handing over: all that had arrived is read.
                                if self.state is _READING:
                                    if shared.stopping:
                                        break
                                    self.state = _IDLE
                                elif self.state is _HANDING_OFF or (
                                    shared.stopping and self.state is not _NEW
                                ):
                                    break
                                await transport.wait_readable()
                                if self.state is _IDLE:
                                    self.state = _READING
                                waited = True
                                continue
                        except PeerProtocolError as exc:
                            # Its framing broke (WebSocket): what came before is answered,
                            # then the close says why (the transport picked the code).
                            log.debug("conn %s: %s", self.id, exc)
                            self._finish(exc.reason)
                            break
                        except trio.BrokenResourceError:
                            self.peer_gone()  # reset by peer: nothing more to deliver
                            break
                        except trio.ClosedResourceError:
                            if shared.handoff is None:
                                raise
                            break  # a handoff woke it; what came meanwhile moves unread
                        if not data:
                            peer_eof = True
                            self._at_eof(decoder)
                            break
                        if not waited:
                            await trio.lowlevel.checkpoint()  # data kept coming: be fair
                        waited = False
                    if self.state is _NEW:
                        self._move(_READING)
                    decoder.receive_data(data)
                    data = None  # the decoder holds what it still needs; a parked reader, nothing
                    # Take at most what the inbox has room for; the rest stays as bytes.
                    while True:
                        room = inbox_size - len(self.inbox)
                        try:
                            events = decoder.next_packets(room)
                        except RemoteProtocolError:
                            self._finish(KickReason.BAD_LENGTH)
                            break
                        if not events:
                            break
                        packets = self._check(events)
                        if packets and queue.submit(self, packets):
                            await queue.schedule(self)
                        if self.state is not _READING:
                            break
                        if len(events) < room:
                            if decoder.error is not None:  # after the packets before it
                                self._finish(KickReason.BAD_LENGTH)
                            break  # the buffer holds no further whole packet
                        while len(self.inbox) >= inbox_size:
                            await self._wakeup().wait()
                        if self.outbox.writing:
                            # Let the writer run between batches: replies pile up only
                            # while the peer really does not read (then it is kicked).
                            await trio.lowlevel.checkpoint()
                    events = packets = None  # a waiting connection keeps no batch alive
                    if self.state is not _READING:
                        break
                moved = False
                if self.state is _HANDING_OFF and not peer_eof:
                    moved = await self._hand_off(decoder)
                if not self.closing and not moved:
                    if shared.handoff is not None:
                        shared.handoff.kept(self, HandoffKept.FINISHING)  # if it was to move
                    if self.state is not _FINISHING:
                        self._move(_FINISHING)
                    while self.busy:  # answer and send everything that was read
                        await self._wakeup().wait()
                    if transport.lingers and not peer_eof:
                        self._move(State.LINGERING)
                        transport.closing(self._ending())
                        await linger(transport)
            clean = True
        except Exception:
            log.exception("bug while serving %s (conn %s); closing it", self.peer, self.id)
            clean = True
        finally:
            await self._close(clean)

    def _wakeup(self) -> Wakeup:
        """The reader's wakeup, made the first time it waits for one (most never do)."""
        if self.wakeup is None:
            self.wakeup = Wakeup()
        return self.wakeup

    def _wake(self) -> None:
        """Wake the reader if it waits for its wakeup (no wakeup yet: it never waited)."""
        if self.wakeup is not None:
            self.wakeup.wake()

    def _ending(self) -> KickReason | CloseReason | None:
        """Why it ends, as the transport is told: a drain's end is the drain's."""
        if self.reason is None and self.shared.stopping:
            return CloseReason.DRAINED
        return self.reason

    def _finish(self, reason: KickReason) -> None:
        """Stop reading for a rule: what was read is still answered, then it closes."""
        self.reason = reason
        self._move(_FINISHING)

    def _at_eof(self, decoder: FrameDecoder) -> None:
        """The peer sent EOF: a half-close, or (mid-packet) a truncated packet."""
        decoder.receive_data(b"")
        try:
            decoder.next_packet()
        except TruncatedPacketError:
            self._finish(KickReason.TRUNCATED)

    def _check(self, events: list[Event]) -> list[Packet]:
        """Count and check one batch of decoded events; the packets a handler should get.

        Applies the flood rule to every completed packet, drops (and counts) bad
        CRCs, unknown codes and wrong sizes, and moves the heartbeat deadline once
        for the batch if it held a refreshing packet.
        """
        shared = self.shared
        rules = shared.rules
        flood_check = rules.flood_check
        any_refreshes = rules.any_packet_refreshes
        counters = shared.counters
        by_code = counters.packets_by_code
        routes = shared.routes
        now = trio.current_time()
        refreshed = False
        packets: list[Packet] = []
        for event in events:
            code = event.code
            by_code[code] += 1
            if flood_check and rules.is_flood(self, now):
                # Drop this packet, answer what came before it, then close.
                self._finish(KickReason.FLOOD)
                break
            if type(event) is Discarded:
                counters.drop(self, DropReason(event.reason.value), code)
                continue
            assert type(event) is Packet
            route = routes.get(code)
            if route is None:
                counters.drop(self, DropReason.UNKNOWN_CODE, code)
                continue
            size = route.body_size
            if size is not None and len(event.body) != size:
                counters.drop(self, DropReason.BAD_BODY_SIZE, code)
                continue
            if code == _PING or any_refreshes:
                refreshed = True
            packets.append(event)
        if refreshed:
            rules.refresh(self, now)
        return packets

    async def _proxy_header(self, policy: ProxyPolicy) -> bytes | None:
        """Read the PROXY header, make ``peer`` the client it names; the bytes after it.

        None when the connection is refused (untrusted source, no valid header in
        time): counted, logged, and the connection closes quietly.
        """
        transport, size = self.transport, self.shared.receive_size

        async def receive() -> bytes:
            while (data := transport.receive_nowait(size)) is None:
                await transport.wait_readable()
            return data

        why = f"sent no complete PROXY header within {policy.timeout:g} s"
        with trio.move_on_after(policy.timeout):
            try:
                self.peer, early = await read_proxy_header(receive, policy, self.peer)
                return early
            except ProxyProtocolError as exc:
                why = str(exc)
            except trio.BrokenResourceError:
                why = "went away before its PROXY header was complete"
        counters = self.shared.counters
        counters.proxy_refused += 1
        counters.connection_log.line(
            "proxy_refused", "refused %s (conn %s): %s", self.peer, self.id, why
        )
        self.reason = CloseReason.PROXY_REFUSED
        self._move(_CLOSING)
        return None

    def _count_network(self, caps: NetworkCaps, early: bytes) -> bytes | None:
        """Count the client the PROXY header named against its network's cap.

        ``early`` again when it is admitted; None when its network is at the cap:
        counted, logged, and the connection closes quietly.
        """
        key = caps.key(self.peer)
        if key is None:
            return early
        if caps.admit(key):
            self.cap_key = key
            return early
        self.shared.counters.refuse_network(self.peer, key, caps.limit)
        self.reason = CloseReason.NETWORK_CAP
        self._move(_CLOSING)
        return None

    async def _upgrade(self, upgrade: Upgrade, early: bytes) -> bytes | None:
        """Swap the transport for the one ``upgrade`` makes of it (TLS after its handshake).

        None when the upgrade refused the connection (it counts and logs why); the
        connection then closes quietly.
        """
        upgraded = await upgrade(self.transport, early, self)
        if upgraded is None:
            self.reason = CloseReason.TLS_FAILED
            self._move(_CLOSING)
            return None
        self.transport = upgraded
        return b""

    # -- the close -----------------------------------------------------------------------------

    async def _close(self, clean: bool) -> None:
        """Account for the end, release the slot (exactly once), close the transport."""
        shared = self.shared
        if self.state is _MOVED:
            await self._close_moved()
            return
        if shared.handoff is not None:
            shared.handoff.kept(self, HandoffKept.CLOSED)  # if it was to move
        if not self.closing:
            reason = self.reason
            if not clean:
                reason = KickReason.DRAIN_TIMEOUT  # the worker's drain deadline cancelled it
            elif reason is None and self.scope.cancelled_caught:
                reason = shared.rules.deadline_reason(self)
            self.reason = reason
            self._move(_CLOSING)
        reason = self.reason
        if isinstance(reason, KickReason):
            shared.counters.kick(self, reason)
        if self.announced:
            if shared.events is not None and shared.events.any_close:
                await shared.events.closed(self)
            if shared.hub is not None:
                shared.hub.closed(self)  # leaves its groups; no more pushes reach it
        del shared.connections[self.slot.index]
        if self.cap_key is not None:
            assert shared.caps is not None
            shared.caps.release(self.cap_key)
            self.cap_key = None
        shared.recycler.rest(self.slot)  # bumps the sequence: anything queued is now stale
        self.outbox.close()
        self._move(_CLOSED)
        self.transport.closing(self._ending())
        await self.transport.aclose()

    async def _close_moved(self) -> None:
        """Forget a connection another worker now serves: no kick, no word to the peer;
        ``on_close`` only if its state stayed behind (``reason`` is ``handed_off``)."""
        shared = self.shared
        self._move(_CLOSING)
        events = shared.events
        if self.reason is CloseReason.HANDED_OFF and events is not None and events.any_close:
            await events.closed(self)
        if shared.hub is not None:
            shared.hub.closed(self, moved=True)
        del shared.connections[self.slot.index]
        if self.cap_key is not None:
            assert shared.caps is not None
            shared.caps.release(self.cap_key)
            self.cap_key = None
        shared.recycler.rest(self.slot)
        self.outbox.close()
        self._move(_CLOSED)
        transport = movable(self.transport)
        assert transport is not None
        await transport.forget()
