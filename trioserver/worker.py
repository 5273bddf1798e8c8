"""One worker: its listeners, connection pool, message queue and timers in one root nursery.

::

    worker = Worker(config, router)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)      # returns once it accepts connections
        ...
        worker.stop()                          # or cancel: both drain

Shape::

    serve
    └─ shielded root nursery
       ├─ recycle timer                    (timers.RecycleTimer)
       ├─ deferred flusher                 (outbox.DeferredFlusher)
       ├─ handler tasks                    (dispatch.MessageQueue)
       ├─ the hub's remote, if any          (mesh.Mesh: the other workers; bus.RedisBus)
       ├─ application tasks                (router.on_worker_start; cancelled at the drain)
       └─ connection nursery               (its deadline is the drain deadline)
          ├─ accept loops, one per listener
          ├─ per binary connection: Connection.serve (connection.py), and a
          │  writer task only while a reply has to wait for the peer
          └─ per HTTP connection: http.serve_http; after a WebSocket handshake
             (``http.websocket_path``), Connection.serve over a WebSocketTransport
             in the same task and pool slot

The worker owns what is shared: the pool, the queue, the timers, the hub
(``worker.hub``: pushes to its connections, users and groups), the drain and
the statistics. Each connection owns its own life (``connection.Connection``)
and reaches what it shares through one ``connection.Shared`` record.

Stopping (``stop()``, or cancelling ``serve``) drains: the accept loops end, every
reader stops reading, handlers finish what was read, every reply is flushed and
the connections close; what is still open after ``drain_timeout`` is closed. A
final stop (``take_queued``) first accepts what the listening sockets have queued:
closing the last copy of a listening socket resets every connection still in its
queue, so those are accepted and drained with the rest. The
tasks run under a shielded scope so that an outside cancellation turns into this
drain instead of killing connections mid-reply.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import secrets
import socket as stdlib_socket
from collections.abc import Sequence
from typing import Final

import attrs
import trio

from .bus import RedisBus
from .config import Config
from .connection import Connection, Shared
from .dispatch import MessageQueue
from .events import Events, run_worker_tasks
from .handlers import Services, default_router
from .handlers.router import Router
from .http import HttpConnectionState, StaticSite, refuse_http_connection, serve_http
from .http.websocket import WebSocketPolicy
from .hub import Hub
from .mesh import Mesh, mesh_supported
from .messages import MessageCode
from .netcaps import NetworkCaps
from .nursery_pool import ConnectionPool, Slot
from .outbox import DeferredFlusher
from .peer import Peer
from .proxy_protocol import ProxyPolicy
from .sockets import BoundListener, Listener, addresses_of, open_listeners, stop_queueing
from .stats import Counters, WorkerStatistics
from .timers import ConnectionRules, RecycleTimer
from .tls import ServerTls, load_config_tls
from .tls_transport import TlsUpgrade
from .transport import SocketTransport, Transport, as_transport, peer_of_stream
from .ws_transport import WebSocketTransport

__all__ = ["BoundListener", "Worker", "open_listeners", "run_worker", "serve_until_signalled"]

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


class Worker:
    """One worker's root nursery (see the module docstring)."""

    def __init__(
        self,
        config: Config | None = None,
        router: Router | None = None,
        *,
        services: Services | None = None,
        listeners: Sequence[Listener] | None = None,
        http_listeners: Sequence[Listener] | None = None,
        index: int = 0,
        tls_listeners: Sequence[Listener] | None = None,
        https_listeners: Sequence[Listener] | None = None,
        tls: ServerTls | None = None,
        instance: str | None = None,
        peers: Sequence[int] = (),
    ) -> None:
        """``listeners`` / ``http_listeners``: already-bound listeners to serve the
        binary protocol / HTTP on; when ``listeners`` is given the worker binds
        nothing itself (HTTP too: pass ``http_listeners`` for it); when neither is,
        it binds ``server.listen`` and ``http.listen`` in ``serve``. The same holds
        for ``tls_listeners`` / ``https_listeners`` (``server.tls_listen`` /
        ``http.tls_listen``), served with ``tls`` (loaded from ``[tls]`` when not
        given). ``instance``
        names this server among others (connection ids start with it; the master
        gives all its workers one); by default a random one. ``peers``: the indexes
        of the other workers of this instance, which the hub reaches through a
        :class:`~trioserver.mesh.Mesh` (with ``[bus] url`` empty)."""
        self.config = config = config if config is not None else Config()
        self.router = router if router is not None else default_router()
        self.services = services if services is not None else Services(config=config)
        self.index = index
        server, conn = config.server, config.connection
        self.pool = ConnectionPool(server.max_connections)
        self.counters = Counters()
        self.counters.limit_connection_lines(config.logging)
        self.recycler = RecycleTimer(self.pool, conn.recycle_delay, conn.max_resting)
        #: Pushes to users, connections and groups (``ctx.hub`` in handlers).
        self.hub = Hub(instance or secrets.token_hex(4), index, os.getpid())
        self.queue = MessageQueue(
            self.router,
            self.services,
            self.counters,
            size=server.queue_size,
            handler_tasks=server.handler_tasks,
            hub=self.hub,
        )
        self._flusher = DeferredFlusher()
        self._mesh: Mesh | None = None
        self._bus: RedisBus | None = None
        bus = config.bus
        if bus.url:
            self._bus = RedisBus(
                self.hub,
                bus.url,
                members_timeout=bus.members_timeout,
                max_pending_bytes=bus.max_pending_bytes,
            )
        elif [p for p in peers if p != index] and mesh_supported():
            self._mesh = Mesh(
                self.hub,
                peers,
                members_timeout=bus.members_timeout,
                max_pending_bytes=bus.max_pending_bytes,
            )
        router = self.router
        events = None
        if router.connect_handlers or router.login_handlers or router.close_handlers:
            events = Events(
                connect=router.connect_handlers,
                login=router.login_handlers,
                close=router.close_handlers,
                make_context=self.queue.context,
                counters=self.counters,
                close_timeout=server.event_timeout,
            )
            self.queue.login = events
        self._app_scope: trio.CancelScope | None = None
        #: Connections by client network (server.max_connections_per_network).
        self.caps = NetworkCaps(server.max_connections_per_network, server.connection_cap_exempt)
        # The login deadline needs someone to log in: a router that serves login and
        # an account store behind it. Other routers' connections never log in.
        routes = self.router.routes
        login = (MessageCode.LOGIN in routes or MessageCode.RESUME in routes) and (
            self.services.accounts is not None or bool(config.accounts.url)
        )
        self.shared = Shared(
            rules=ConnectionRules.from_settings(conn, login=login),
            counters=self.counters,
            queue=self.queue,
            recycler=self.recycler,
            routes=self.router.routes,
            flusher=self._flusher,
            proxy=ProxyPolicy.from_settings(server),
            caps=self.caps if self.caps.enabled else None,
            max_packet_length=server.max_packet_length,
            receive_size=server.receive_size,
            inbox_size=server.inbox_size,
            max_pending_replies=conn.max_pending_replies,
            max_pending_bytes=conn.max_pending_bytes,
            events=events,
            hub=self.hub,
            id_prefix=self.hub.prefix,
        )
        self._given_listeners = list(listeners) if listeners is not None else None
        if http_listeners is not None:
            self._given_http: list[Listener] | None = list(http_listeners)
        else:
            self._given_http = [] if listeners is not None else None
        self._listeners: list[Listener] = []
        self._http_listeners: list[Listener] = []
        given = listeners is not None
        self._given_tls = list(tls_listeners) if tls_listeners is not None else None
        self._given_https = list(https_listeners) if https_listeners is not None else None
        if given:
            self._given_tls = self._given_tls or []
            self._given_https = self._given_https or []
        self._tls_listeners: list[Listener] = []
        self._https_listeners: list[Listener] = []
        self.tls = tls
        self._site: StaticSite | None = None
        #: What makes a request on the HTTP port a WebSocket (None: WebSocket is off).
        self._websocket: WebSocketPolicy | None = None
        #: The open HTTP connections by slot, oldest first (what ``_give_up_idle_http`` reads).
        self._http_connections: dict[int, HttpConnectionState] = {}
        #: Free slots below which idle HTTP keep-alive connections are given up.
        self._http_reserve = int(server.max_connections * config.http.keep_alive_reserve)
        self._http_closed = trio.lowlevel.ParkingLot()
        self._accept_scope = trio.CancelScope()
        #: The accept loops take what is queued before they close their sockets.
        self._take_queued = False
        #: Listening sockets this worker bound itself (no other process holds them).
        self._own_sockets: list[stdlib_socket.socket] = []
        self._conn_nursery: trio.Nursery | None = None
        self._drain_deadline = math.inf
        self._stopped = trio.Event()

    # -- public face -------------------------------------------------------------------

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) each binary-protocol socket is bound to (port 0 resolved)."""
        return addresses_of(self._listeners)

    @property
    def http_addresses(self) -> list[tuple[str, int]]:
        """The (host, port) each HTTP socket is bound to."""
        return addresses_of(self._http_listeners)

    @property
    def tls_addresses(self) -> list[tuple[str, int]]:
        """The (host, port) each binary-protocol-over-TLS socket is bound to."""
        return addresses_of(self._tls_listeners)

    @property
    def https_addresses(self) -> list[tuple[str, int]]:
        """The (host, port) each HTTPS socket is bound to."""
        return addresses_of(self._https_listeners)

    @property
    def stopping(self) -> bool:
        return self.shared.stopping

    def connections(self) -> list[Connection]:
        """The open binary-protocol connections (a snapshot)."""
        return list(self.shared.connections.values())

    @property
    def http_connection_count(self) -> int:
        """How many HTTP connections are open."""
        return len(self._http_connections)

    async def wait_http_connections(self, at_most: int = 0) -> None:
        """Wait until at most ``at_most`` HTTP connections are open (woken as each closes)."""
        while len(self._http_connections) > at_most:
            await self._http_closed.park()
        await trio.lowlevel.checkpoint()

    def statistics(self) -> WorkerStatistics:
        conns = self.shared.connections.values()
        stats = self.counters.snapshot(
            self.pool.statistics(),
            self.queue.depth,
            self.queue.capacity,
            inbox_packets=sum(len(c.inbox) for c in conns),
            outbox_replies=sum(c.outbox.pending_replies for c in conns),
            outbox_bytes=sum(c.outbox.pending_bytes for c in conns),
        )
        return attrs.evolve(stats, hub=self.hub.statistics().counters())

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

    def stop(self, grace: float | None = None, *, take_queued: bool = False) -> None:
        """Drain: stop accepting and reading, finish and flush, close after ``grace``.

        ``grace`` defaults to ``server.drain_timeout``; 0 closes everything now.
        Calling it again can only shorten the grace. ``take_queued``: see
        :meth:`take_queued`.
        """
        if take_queued:
            self.take_queued()
        grace = self.config.server.drain_timeout if grace is None else grace
        now = trio.current_time()
        shared = self.shared
        if not shared.stopping:
            shared.stopping = True
            log.info(
                "worker %d stopping: %d connections get %.1f s to finish",
                self.index,
                len(shared.connections) + len(self._http_connections),
                grace,
            )
            self._accept_scope.cancel()
            if self._app_scope is not None:
                self._app_scope.cancel()  # application tasks (on_worker_start) end now
            if self._mesh is not None:
                self._mesh.stop_listening()  # the next worker of this slot takes the name
            for conn in list(shared.connections.values()):
                conn.drain(now)
            for state in self._http_connections.values():
                state.stop()  # idle ones close now; a sending one after its answers
        self._drain_deadline = min(self._drain_deadline, now + grace)
        if self._conn_nursery is not None:
            self._conn_nursery.cancel_scope.deadline = self._drain_deadline

    async def wait_stopped(self) -> None:
        """Wait until the worker has stopped: every connection closed and counted."""
        await self._stopped.wait()

    async def serve(
        self, *, task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until ``stop()`` or cancellation, then drain; ``started`` once accepting."""
        # Codes no route serves share one counter key: clients cannot choose series.
        self.counters.serve_codes(self.router.routes, fold=self.config.metrics.fold_unknown_codes)
        backlog = self.config.server.backlog
        config = self.config
        if self.tls is None and (
            self._given_tls or self._given_https or self._given_listeners is None
        ):
            self.tls = load_config_tls(config)  # raises TlsSetupError (an OSError)
        bound: list[Listener] = []
        try:
            for given, addresses, attribute in (
                (self._given_listeners, config.server.listen, "_listeners"),
                (self._given_http, config.http.listen, "_http_listeners"),
                (self._given_tls, config.server.tls_listen, "_tls_listeners"),
                (self._given_https, config.http.tls_listen, "_https_listeners"),
            ):
                if given is not None:
                    setattr(self, attribute, list(given))
                else:
                    opened = list(await open_listeners(addresses, backlog))
                    bound.extend(opened)
                    self._own_sockets.extend(b.sock for b in opened)
                    setattr(self, attribute, opened)
        except BaseException:
            for listener in bound:
                if isinstance(listener, BoundListener):
                    listener.sock.close()
            raise
        if (self._tls_listeners or self._https_listeners) and self.tls is None:
            raise ValueError("TLS listeners given without tls= (or a [tls] certificate)")
        if self._http_listeners or self._https_listeners:
            self._site = StaticSite.from_settings(self.config.http)
            self._websocket = WebSocketPolicy.from_settings(self.config.http)
        async with trio.open_nursery() as outer:
            await outer.start(self._run)
            task_status.started(self)
            try:
                await self._stopped.wait()
            finally:
                if not self._stopped.is_set():
                    # Cancelled from outside: drain under a shield, bounded by drain_timeout.
                    self.stop()
                    with trio.CancelScope(shield=True):
                        await self._stopped.wait()

    # -- the root nursery ------------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from .accounts import open_accounts
        from .prefork.master import worker_count

        # The worker opens (and closes) the store [accounts] names unless the embedder
        # put a service in ``services.accounts``; with no url, accounts answer
        # "server unavailable".
        owned_accounts = None
        if self.services.accounts is None and self.config.accounts.url:
            owned_accounts = self.services.accounts = await open_accounts(
                self.config.accounts,
                workers=worker_count(self.config),
                handler_tasks=self.config.server.handler_tasks,
            )
        try:
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as services:
                    services.start_soon(self.recycler.run)
                    services.start_soon(self._flusher.run)
                    services.start_soon(self.counters.connection_log.run)
                    await services.start(self.queue.run)
                    if self._mesh is not None:
                        await services.start(self._mesh.run)
                    if self._bus is not None:
                        await services.start(self._bus.run)
                    if self.router.worker_tasks:
                        self._app_scope = await services.start(
                            run_worker_tasks, self.router.worker_tasks, self, self.counters
                        )
                        if self.shared.stopping:
                            self._app_scope.cancel()
                    async with trio.open_nursery() as conns:
                        self._conn_nursery = conns
                        self.shared.nursery = conns
                        conns.cancel_scope.deadline = self._drain_deadline
                        await conns.start(self._accept_all)
                        log.info(
                            "worker %d serving the binary protocol on %s%s",
                            self.index,
                            ", ".join(f"{h}:{p}" for h, p in self.addresses) or "memory",
                            "".join(f", HTTP on {h}:{p}" for h, p in self.http_addresses),
                        )
                        if self.tls is not None and (self._tls_listeners or self._https_listeners):
                            log.info(
                                "worker %d serving TLS (%s) on %s",
                                self.index,
                                self.tls.description or "certificate loaded",
                                ", ".join(
                                    f"{h}:{p}" for h, p in self.tls_addresses + self.https_addresses
                                )
                                or "memory",
                            )
                        task_status.started()
                    services.cancel_scope.cancel()
        finally:
            self.recycler.recycle_all()
            if owned_accounts is not None:  # closed after the last handler is done
                if self.services.accounts is owned_accounts:
                    self.services.accounts = None
                with trio.CancelScope(shield=True):
                    await owned_accounts.aclose()
            self._stopped.set()

    async def _accept_all(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Run one accept loop per listener until ``stop()`` cancels them all."""
        with self._accept_scope:
            async with trio.open_nursery() as nursery:
                for listener in self._listeners:
                    nursery.start_soon(self._accept_loop, listener, False)
                for listener in self._http_listeners:
                    nursery.start_soon(self._accept_loop, listener, True)
                if self.tls is not None:
                    tls, counters = self.tls, self.counters
                    conns = self._conn_nursery
                    binary = TlsUpgrade(tls.binary, tls.handshake_timeout, counters, conns)
                    https = TlsUpgrade(tls.https, tls.handshake_timeout, counters, conns)
                    for listener in self._tls_listeners:
                        nursery.start_soon(self._accept_loop, listener, False, binary)
                    for listener in self._https_listeners:
                        nursery.start_soon(self._accept_loop, listener, True, https)
                task_status.started()

    async def _accept_loop(
        self, listener: Listener, http: bool, upgrade: TlsUpgrade | None = None
    ) -> None:
        backoff = _BACKOFF_START
        burst = 0
        try:
            while True:
                try:
                    if isinstance(listener, BoundListener):
                        try:
                            raw, address = listener.sock.accept()
                        except BlockingIOError:
                            burst = 0
                            await trio.lowlevel.wait_readable(listener.sock)
                            continue
                        transport: Transport = _socket_transport(raw)
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
                self._admit(transport, peer, http, upgrade)
                if burst >= _ACCEPT_BURST:  # fairness in an accept storm
                    burst = 0
                    await trio.lowlevel.checkpoint()
        finally:
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
        for _ in range(self.config.server.backlog + _ACCEPT_BURST):
            try:
                raw, address = listener.sock.accept()
            except OSError:  # BlockingIOError: the queue is empty
                break
            self._admit(_socket_transport(raw), Peer.from_sockaddr(address), http, upgrade)
            taken += 1
        if taken:
            log.info("worker %d: %d queued connections accepted for the drain", self.index, taken)

    def _admit(
        self, transport: Transport, peer: Peer, http: bool, upgrade: TlsUpgrade | None = None
    ) -> None:
        """Give a new connection a slot and its task, or refuse it (counted).

        Its network is counted against ``max_connections_per_network`` here, before
        a slot is taken, unless a PROXY header is to name the client: then the
        connection counts it once the header is read.
        """
        nursery = self._conn_nursery
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
        if self._http_connections and self.pool.free <= self._http_reserve:
            self._give_up_idle_http()
        if slot is None:
            if key is not None:
                self.caps.release(key)
            self.counters.refuse()
            self._refuse(nursery, transport, http, upgrade)
            return
        self.counters.accepted += 1
        if http:
            nursery.start_soon(
                self._http_connection, transport, peer, slot, upgrade, key, name=_HTTP_TASK_NAME
            )
        else:
            conn = Connection(slot, transport, peer, self.shared, upgrade)
            conn.cap_key = key
            self.shared.connections[slot.index] = conn
            if self.shared.stopping:  # taken from the queue in the drain: its first request
                conn.drain(trio.current_time())
            nursery.start_soon(conn.serve, name=_TASK_NAME)

    def _give_up_idle_http(self, most: int = 2, scan: int = 64) -> None:
        """Close up to ``most`` idle HTTP keep-alive connections, oldest first.

        Two per arrival: faster than connections arrive, so a pool held by idle
        keep-alive connections is soon free again. ``scan`` bounds the look
        (the oldest connections are the ones most likely idle).
        """
        for index, state in enumerate(self._http_connections.values()):
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

    async def _http_connection(
        self,
        transport: Transport,
        peer: Peer,
        slot: Slot,
        upgrade: TlsUpgrade | None = None,
        cap_key: str | None = None,
    ) -> None:
        """One HTTP connection: it holds a slot of the shared pool, and its count
        under ``cap_key`` in the network caps, while it lives (an HTTPS one
        handshakes first, in this task). A WebSocket handshake turns it into a
        binary-protocol connection in the same slot, count and task."""
        assert self._site is not None
        state = HttpConnectionState(
            draining=self.shared.stopping, by_status=self.counters.http_by_status
        )
        self._http_connections[slot.index] = state
        websocket = None
        try:
            if upgrade is not None:
                secured = await upgrade(transport, b"", _HttpName(peer, slot))
                if secured is None:
                    await transport.aclose()
                    return
                transport = secured
            websocket = await serve_http(
                transport, self._site, self.config.http, state, peer=peer, websocket=self._websocket
            )
        finally:
            del self._http_connections[slot.index]
            if websocket is None:
                if cap_key is not None:
                    self.caps.release(cap_key)
                self.recycler.rest(slot)
            if self._http_closed:  # someone waits in wait_http_connections
                self._http_closed.unpark_all()
        if websocket is None:
            return
        assert self._websocket is not None
        ws = WebSocketTransport(
            transport,
            websocket.trailing,
            max_message=self._websocket.max_message,
            subprotocol=websocket.accepted.subprotocol,
        )
        conn = Connection(slot, ws, peer, self.shared)
        conn.cap_key = cap_key  # released when it closes
        self.shared.connections[slot.index] = conn
        if self.shared.stopping:  # the drain began during the handshake: it ends it too
            conn.drain(trio.current_time())
        await conn.serve(proxy_header=False)  # it rests the slot when it closes


def _socket_transport(raw: stdlib_socket.socket) -> SocketTransport:
    """The transport of a freshly accepted socket."""
    raw.setblocking(False)
    raw.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
    return SocketTransport(raw)


@attrs.frozen
class _HttpName:
    """An HTTP connection as the TLS upgrade names it in a log line."""

    peer: Peer
    slot: Slot

    @property
    def id(self) -> str:
        return f"http {self.slot.index}#{self.slot.sequence}"


def run_worker(
    config: Config, router: Router | None = None, *, services: Services | None = None
) -> None:
    """Run one worker in this process until SIGTERM (drain) or SIGINT/SIGQUIT (fast stop)."""
    trio.run(serve_until_signalled, Worker(config, router, services=services))


async def serve_until_signalled(worker: Worker) -> None:
    """Serve ``worker``; SIGTERM drains it, SIGINT or SIGQUIT (or a second signal) stops it now."""
    import signal

    async def watch(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGQUIT) as sigs:
            task_status.started()
            async for signum in sigs:
                name = signal.Signals(signum).name
                if signum == signal.SIGTERM and not worker.stopping:
                    log.info(
                        "%s: draining (up to %.1f s)", name, worker.config.server.drain_timeout
                    )
                    worker.stop(take_queued=True)  # nobody else accepts on these sockets
                else:
                    log.info("%s: stopping now", name)
                    worker.stop(grace=0)

    async with trio.open_nursery() as nursery:
        await nursery.start(watch)
        await worker.serve()
        nursery.cancel_scope.cancel()
