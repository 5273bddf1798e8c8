"""The worker's front door: its listeners, their accept loops, and who gets in.

An accepted connection is admitted (a pool slot, its network counted against
``server.max_connections_per_network``, its task in the connection nursery) or
refused, counted by reason: plain HTTP with a 503, everything else with a close.
HTTP connections live here too while they speak HTTP (a WebSocket handshake turns
one into a binary-protocol ``Connection`` in the same slot and task), and idle
keep-alive ones are given up first when the pool runs low.

Accept loops take every connection that is waiting in one wake-up (up to
``_ACCEPT_BURST`` before yielding), back off on running out of file descriptors,
and on a final stop (``take_queued``) accept what the socket still has queued
before closing it, so that nothing queued is reset.
"""

from __future__ import annotations

import errno
import logging
import socket as stdlib_socket
import sys
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from .connection import Connection, Shared
from .http import HttpConnectionState, StaticSite, refuse_http_connection, serve_http
from .http.parser import HttpConnection
from .http.server import Begun, answer_at_once, finish_answer
from .http.websocket import WebSocketPolicy
from .netcaps import NetworkCaps
from .nursery_pool import ConnectionPool, Slot
from .parking import ReadParking
from .peer import Peer
from .sockets import BoundListener, Listener, addresses_of, open_listeners, stop_queueing
from .stats import Counters
from .timers import ExpiryTimer, RecycleTimer
from .tls import ServerTls
from .tls_transport import TlsUpgrade
from .transport import SocketTransport, Transport, as_transport, peer_of_stream
from .ws_transport import WebSocketTransport

if TYPE_CHECKING:
    from .config import Config

__all__ = ["Acceptor", "Given"]

#: Listeners a worker was given for one kind of port, or None: bind what its setting names.
Given = list[Listener] | None

log = logging.getLogger("trioserver.worker")

#: accept() errors that mean "out of a resource, try again later" (trio's own list).
_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: Back-off after a capacity error: starts small, doubles, capped (never spins).
_BACKOFF_START: Final = 0.1
_BACKOFF_MAX: Final = 1.0
#: Connections accepted in a row before the accept loop yields: a burst of new
#: clients is taken in a few scheduler passes, not one pass per client.
_ACCEPT_BURST: Final = 64
#: Connection tasks' names, given rather than left to trio, which would format the
#: same string anew for every task: 85 bytes per idle connection.
_TASK_NAME: Final = "trioserver.connection"
_HTTP_TASK_NAME: Final = "trioserver.http.connection"


class Acceptor:
    """One worker's listeners and the connections they let in (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        index: int,
        pool: ConnectionPool,
        recycler: RecycleTimer,
        counters: Counters,
        shared: Shared,
        caps: NetworkCaps,
        tls: ServerTls | None,
        timer: ExpiryTimer,
    ) -> None:
        self.config = config
        self.index = index
        self.pool = pool
        self.recycler = recycler
        self.counters = counters
        self.shared = shared
        self.caps = caps
        self.tls = tls
        #: The HTTP connections' deadlines (run by the worker).
        self.timer = timer
        self.listeners: list[Listener] = []
        self.http_listeners: list[Listener] = []
        self.tls_listeners: list[Listener] = []
        self.https_listeners: list[Listener] = []
        #: Where connection tasks run (the worker's connection nursery, once it serves).
        self.nursery: trio.Nursery | None = None
        self.site: StaticSite | None = None
        #: What makes a request on the HTTP port a WebSocket (None: WebSocket is off).
        self.websocket: WebSocketPolicy | None = None
        #: The open HTTP connections by slot, oldest first (what ``_give_up_idle_http`` reads).
        self.http_connections: dict[int, HttpConnectionState] = {}
        #: Free slots below which idle HTTP keep-alive connections are given up.
        self._http_reserve = int(config.server.max_connections * config.http.keep_alive_reserve)
        self._http_closed = trio.lowlevel.ParkingLot()
        #: A plain HTTP connection whose request asks to close is answered as it is
        #: accepted, without a task (``http.server.answer_at_once``); the access log
        #: (a duration and a peer per line) needs the task.
        self._answer_at_once = not config.http.access_log
        self._scope = trio.CancelScope()
        #: The accept loops take what is queued before they close their sockets.
        self._take_queued = False
        #: Listening sockets this worker bound itself (no other process holds them).
        self._own_sockets: list[stdlib_socket.socket] = []

    # -- listeners -------------------------------------------------------------------------

    async def bind(
        self,
        given: tuple[
            list[Listener] | None,
            list[Listener] | None,
            list[Listener] | None,
            list[Listener] | None,
        ],
    ) -> None:
        """Take each given list of listeners, or bind the addresses its setting names."""
        config = self.config
        bound: list[BoundListener] = []
        try:
            for listeners, addresses, attribute in zip(
                given,
                (
                    config.server.listen,
                    config.http.listen,
                    config.server.tls_listen,
                    config.http.tls_listen,
                ),
                ("listeners", "http_listeners", "tls_listeners", "https_listeners"),
                strict=True,
            ):
                if listeners is not None:
                    setattr(self, attribute, list(listeners))
                else:
                    opened = list(await open_listeners(addresses, config.server.backlog))
                    bound.extend(opened)
                    self._own_sockets.extend(b.sock for b in opened)
                    setattr(self, attribute, opened)
        except BaseException:
            for listener in bound:
                listener.sock.close()
            raise
        if (self.tls_listeners or self.https_listeners) and self.tls is None:
            raise ValueError("TLS listeners given without tls= (or a [tls] certificate)")
        if self.http_listeners or self.https_listeners:
            self.site = StaticSite.from_settings(config.http)
            self.websocket = WebSocketPolicy.from_settings(config.http)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return addresses_of(self.listeners)

    @property
    def http_addresses(self) -> list[tuple[str, int]]:
        return addresses_of(self.http_listeners)

    @property
    def tls_addresses(self) -> list[tuple[str, int]]:
        return addresses_of(self.tls_listeners)

    @property
    def https_addresses(self) -> list[tuple[str, int]]:
        return addresses_of(self.https_listeners)

    async def wait_http_connections(self, at_most: int = 0) -> None:
        """Wait until at most ``at_most`` HTTP connections are open (woken as each closes)."""
        while len(self.http_connections) > at_most:
            await self._http_closed.park()
        await trio.lowlevel.checkpoint()

    def take_queued(self) -> None:
        """Have the stop accept what the listening sockets have queued before closing them.

        For the final stop, when no other process will accept from these sockets: the
        sockets this worker bound itself start no new handshake now; sockets it was
        given must have been told so by their owner (the master does it).
        """
        if not self._take_queued:
            self._take_queued = True
            for sock in self._own_sockets:
                stop_queueing(sock)

    def stop(self) -> None:
        """The drain began: the accept loops end; idle HTTP connections close now, a
        sending one after its answers."""
        self._scope.cancel()
        for state in self.http_connections.values():
            state.stop()

    # -- accepting -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Run one accept loop per listener until :meth:`stop` cancels them all."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                for listener in self.listeners:
                    nursery.start_soon(self._accept_loop, listener, False)
                for listener in self.http_listeners:
                    nursery.start_soon(self._accept_loop, listener, True)
                if self.tls is not None:
                    tls, counters = self.tls, self.counters
                    conns = self.nursery
                    binary = TlsUpgrade(tls.binary, tls.handshake_timeout, counters, conns)
                    https = TlsUpgrade(tls.https, tls.handshake_timeout, counters, conns)
                    for listener in self.tls_listeners:
                        nursery.start_soon(self._accept_loop, listener, False, binary)
                    for listener in self.https_listeners:
                        nursery.start_soon(self._accept_loop, listener, True, https)
                task_status.started()

    async def _accept_loop(
        self, listener: Listener, http: bool, upgrade: TlsUpgrade | None = None
    ) -> None:
        backoff = _BACKOFF_START
        burst = 0
        accept = None
        if isinstance(listener, BoundListener):
            accept = _Accept(listener.sock)
        #: Plain HTTP connections of this burst waiting for a second look (``_admit``).
        later: list[_Later] | None = [] if http and upgrade is None else None
        try:
            while True:
                try:
                    if isinstance(listener, BoundListener):
                        assert accept is not None
                        try:
                            raw, address = accept()
                        except BlockingIOError:
                            burst = 0
                            if later:
                                # One pass of the scheduler first: requests on their way
                                # arrive meanwhile (a client sends right after connecting).
                                await trio.lowlevel.checkpoint()
                                self._second_look(later)
                                continue
                            await trio.lowlevel.wait_readable(listener.sock)
                            continue
                        transport: Transport = _socket_transport(raw, self.shared.parking)
                        peer = Peer.from_sockaddr(address)
                        burst += 1
                    else:
                        stream = await listener.accept()
                        transport = as_transport(stream)
                        peer = peer_of_stream(stream)
                except OSError as exc:
                    if exc.errno not in _CAPACITY_ERRNOS:
                        raise
                    self.counters.accept_errors += 1
                    log.warning(
                        "accept failed (%s); backing off %.1f s: raise the open-file "
                        "limit or lower server.max_connections",
                        errno.errorcode.get(exc.errno or 0, exc.errno),
                        backoff,
                    )
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                    continue
                backoff = _BACKOFF_START
                self._admit(transport, peer, http, upgrade, later)
                if burst >= _ACCEPT_BURST:  # fairness in an accept storm
                    burst = 0
                    if later:
                        self._second_look(later)
                    await trio.lowlevel.checkpoint()
        finally:
            if later:
                self._second_look(later)
            if self._take_queued and isinstance(listener, BoundListener):
                self._accept_queued(listener, http, upgrade)
            with trio.CancelScope(shield=True):
                if isinstance(listener, BoundListener):
                    await trio.aclose_forcefully(listener.listener)
                else:
                    await trio.aclose_forcefully(listener)

    def _accept_queued(
        self, listener: BoundListener, http: bool, upgrade: TlsUpgrade | None
    ) -> None:
        """Accept every connection ``listener`` has queued, for the drain.

        Bounded: the socket starts no new handshake by now, so its queue holds at
        most ``server.backlog`` connections and the few whose handshake was under way.
        """
        taken = 0
        accept = _Accept(listener.sock)
        for _ in range(self.config.server.backlog + _ACCEPT_BURST):
            try:
                raw, address = accept()
            except OSError:  # BlockingIOError: the queue is empty
                break
            self._admit(
                _socket_transport(raw, self.shared.parking),
                Peer.from_sockaddr(address),
                http,
                upgrade,
            )
            taken += 1
        if taken:
            log.info("worker %d: %d queued connections accepted for the drain", self.index, taken)

    def _admit(
        self,
        transport: Transport,
        peer: Peer,
        http: bool,
        upgrade: TlsUpgrade | None = None,
        later: list[_Later] | None = None,
    ) -> None:
        """Give a new connection a slot and its task, or refuse it (counted).

        Its network is counted against ``max_connections_per_network`` here, before
        a slot is taken, unless a PROXY header is to name the client: then the
        connection counts it once the header is read. ``later``: where an HTTP
        connection whose request is not there yet waits for a second look.
        """
        nursery = self.nursery
        assert nursery is not None
        key = None
        caps = self.shared.caps
        if caps is not None and (http or self.shared.proxy is None):
            key = caps.key(peer)
            if key is not None and not caps.admit(key):
                self.counters.refuse_network(peer, key, caps.limit)
                self._refuse(nursery, transport, http, upgrade)
                return
        slot = self.pool.acquire()
        if self.http_connections and self.pool.free <= self._http_reserve:
            self._give_up_idle_http()
        if slot is None:
            if key is not None:
                self.caps.release(key)
            self.counters.refuse()
            self._refuse(nursery, transport, http, upgrade)
            return
        self.counters.accepted += 1
        if http:
            self._start_http(transport, peer, slot, upgrade, key, later)
        else:
            conn = Connection(slot, transport, peer, self.shared, upgrade)
            conn.cap_key = key
            self.shared.connections[slot.index] = conn
            if self.shared.stopping:  # taken from the queue in the drain: its first request
                conn.drain(trio.current_time())
            nursery.start_soon(conn.serve, name=_TASK_NAME)

    def _start_http(
        self,
        transport: Transport,
        peer: Peer,
        slot: Slot,
        upgrade: TlsUpgrade | None,
        key: str | None,
        later: list[_Later] | None = None,
        parser: HttpConnection | None = None,
    ) -> None:
        """Answer an admitted HTTP connection at once (``answer_at_once``), or start its
        task; with ``later``, one whose request is not there yet waits in it for
        :meth:`_second_look` instead."""
        nursery = self.nursery
        assert nursery is not None
        begun = None
        if upgrade is None and type(transport) is SocketTransport and self._answer_at_once:
            assert self.site is not None
            first = answer_at_once(
                transport.sock,
                self.site,
                self.config.http,
                self.counters.http_by_status,
                self.websocket,
                parser,
            )
            if first is None:
                # Answered and closed, never seen by anything else: the slot needs no rest.
                if key is not None:
                    self.caps.release(key)
                self.pool.release(slot)
                self.pool.recycle(slot)
                return
            if type(first) is bytes:  # the socket took part of it: a task sends the rest
                nursery.start_soon(
                    self._finish_answer, transport, first, slot, key, name=_HTTP_TASK_NAME
                )
                return
            assert isinstance(first, Begun)
            if not first.events and later is not None:
                later.append((transport, peer, slot, key, first.parser))
                return
            begun = first
        nursery.start_soon(
            self._http_connection,
            transport,
            peer,
            slot,
            upgrade,
            key,
            begun,
            name=_HTTP_TASK_NAME,
        )

    def _second_look(self, later: list[_Later]) -> None:
        """The HTTP connections of an accept burst whose request was not there at accept,
        looked at once more at the burst's end (by then it mostly is); the others get
        their task."""
        for transport, peer, slot, key, parser in later:
            self._start_http(transport, peer, slot, None, key, None, parser)
        later.clear()

    def _give_up_idle_http(self, most: int = 2, scan: int = 64) -> None:
        """Close up to ``most`` idle HTTP keep-alive connections, oldest first.

        Two per arrival: faster than connections arrive, so a pool held by idle
        keep-alive connections is soon free again. ``scan`` bounds the look
        (the oldest connections are the ones most likely idle).
        """
        for index, state in enumerate(self.http_connections.values()):
            if index >= scan or most <= 0:
                break
            if state.idle:
                state.give_up()
                self.counters.http_given_up += 1
                most -= 1

    @staticmethod
    def _refuse(
        nursery: trio.Nursery, transport: Transport, http: bool, upgrade: TlsUpgrade | None
    ) -> None:
        """Close a refused connection: plain HTTP gets a 503, the rest a close."""
        if http and upgrade is None:
            nursery.start_soon(refuse_http_connection, transport)
        elif isinstance(transport, SocketTransport):
            transport.close()  # at once: a refused socket costs no task
        else:
            nursery.start_soon(transport.aclose)

    async def _finish_answer(
        self, transport: SocketTransport, rest: bytes, slot: Slot, cap_key: str | None
    ) -> None:
        """The rest of an answer ``answer_at_once`` began, then the close; the slot is held
        until then."""
        try:
            await finish_answer(transport.sock, rest, self.config.http)
        finally:
            if cap_key is not None:
                self.caps.release(cap_key)
            self.recycler.rest(slot)

    async def _http_connection(
        self,
        transport: Transport,
        peer: Peer,
        slot: Slot,
        upgrade: TlsUpgrade | None = None,
        cap_key: str | None = None,
        begun: Begun | None = None,
    ) -> None:
        """One HTTP connection: it holds a slot of the shared pool, and its count
        under ``cap_key`` in the network caps, while it lives (an HTTPS one
        handshakes first, in this task). A WebSocket handshake turns it into a
        binary-protocol connection in the same slot, count and task."""
        assert self.site is not None
        state = HttpConnectionState(
            draining=self.shared.stopping, by_status=self.counters.http_by_status
        )
        self.http_connections[slot.index] = state
        websocket = None
        try:
            if upgrade is not None:
                secured = await upgrade(transport, b"", _HttpName(peer, slot))
                if secured is None:
                    await transport.aclose()
                    return
                transport = secured
            websocket = await serve_http(
                transport,
                self.site,
                self.config.http,
                state,
                peer=peer,
                websocket=self.websocket,
                timer=self.timer,
                begun=begun,
            )
        finally:
            del self.http_connections[slot.index]
            if websocket is None:
                if cap_key is not None:
                    self.caps.release(cap_key)
                self.recycler.rest(slot)
            if self._http_closed:  # someone waits in wait_http_connections
                self._http_closed.unpark_all()
        if websocket is None:
            return
        assert self.websocket is not None
        ws = WebSocketTransport(
            transport,
            websocket.trailing,
            max_message=self.websocket.max_message,
            subprotocol=websocket.accepted.subprotocol,
        )
        conn = Connection(slot, ws, peer, self.shared)
        conn.cap_key = cap_key  # released when it closes
        self.shared.connections[slot.index] = conn
        if self.shared.stopping:  # the drain began during the handshake: it ends it too
            conn.drain(trio.current_time())
        await conn.serve(proxy_header=False)  # it rests the slot when it closes


#: Linux copies TCP_NODELAY from the listening socket to each accepted one, so it is set
#: once per listener there (one system call fewer per connection).
_NODELAY_INHERITED: Final = sys.platform == "linux"


class _Accept:
    """``accept()`` on a listening socket, without the standard library's per-call
    detour (``socket.accept`` converts the listener's family and type to enums and
    back for each connection it wraps)."""

    __slots__ = ("_accept", "_family", "_type")

    def __init__(self, sock: stdlib_socket.socket) -> None:
        self._accept = sock._accept  # type: ignore[attr-defined]  # what socket.accept calls
        self._family = int(sock.family)
        self._type = int(sock.type)
        if _NODELAY_INHERITED and self._family in (stdlib_socket.AF_INET, stdlib_socket.AF_INET6):
            sock.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)

    def __call__(self) -> tuple[stdlib_socket.socket, Any]:
        fd, address = self._accept()
        return stdlib_socket.socket(self._family, self._type, 0, fd), address


def _socket_transport(raw: stdlib_socket.socket, parking: ReadParking | None) -> SocketTransport:
    """The transport of a freshly accepted socket."""
    raw.setblocking(False)
    if not _NODELAY_INHERITED:
        raw.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
    return SocketTransport(raw, parking)


#: An HTTP connection waiting for its second look: transport, peer, slot, network key and
#: the parser made for it.
_Later = tuple[SocketTransport, Peer, Slot, str | None, HttpConnection]


@attrs.frozen
class _HttpName:
    """An HTTP connection as the TLS upgrade names it in a log line."""

    peer: Peer
    slot: Slot

    @property
    def id(self) -> str:
        return f"http {self.slot.index}#{self.slot.sequence}"
