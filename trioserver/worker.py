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
       ├─ HTTP connections' deadlines       (timers.ExpiryTimer)
       ├─ deferred flusher                 (outbox.DeferredFlusher)
       ├─ read parking: idle readers' epoll (parking.ReadParking)
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

A reload can hand the connections to a new worker instead of draining them
(``hand_over`` here, ``adopt_from`` there; :mod:`trioserver.handoff`): what
cannot move drains as on a stop.

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

import logging
import math
import os
import secrets
import socket
from collections.abc import Sequence

import attrs
import trio

from .acceptor import Acceptor, Given
from .bus import RedisBus
from .config import Config, worker_count
from .connection import Connection, Shared
from .dispatch import MessageQueue
from .events import Events, run_worker_tasks
from .handlers import Services, default_router
from .handlers.router import Router
from .handoff import HandoffCounts, HandoffSender, adopt
from .hub import Hub
from .mesh import Mesh, mesh_supported
from .messages import MessageCode
from .netcaps import NetworkCaps
from .nursery_pool import ConnectionPool
from .outbox import DeferredFlusher
from .parking import ReadParking, parking_supported
from .proxy_protocol import ProxyPolicy
from .reasons import HandoffKept
from .sockets import BoundListener, Listener, open_listeners
from .stats import Counters, WorkerStatistics
from .timers import ConnectionRules, ExpiryTimer, RecycleTimer
from .tls import ServerTls, load_config_tls

__all__ = ["BoundListener", "Worker", "open_listeners", "run_worker", "serve_until_signalled"]

log = logging.getLogger("trioserver.worker")


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
        #: The HTTP connections' header, keep-alive and send deadlines.
        self.http_timer = ExpiryTimer()
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
            websocket_max_message=config.http.websocket_max_message,
            events=events,
            hub=self.hub,
            id_prefix=self.hub.prefix,
        )
        given_tls: Given = list(tls_listeners) if tls_listeners is not None else None
        given_https: Given = list(https_listeners) if https_listeners is not None else None
        given_http: Given = list(http_listeners) if http_listeners is not None else None
        if listeners is not None:  # given listeners: the worker binds nothing itself
            given_http, given_tls, given_https = (
                given_http or [],
                given_tls or [],
                given_https or [],
            )
        self._given = (
            list(listeners) if listeners is not None else None,
            given_http,
            given_tls,
            given_https,
        )
        #: The listeners and the connections they let in (acceptor.py).
        self.acceptor = Acceptor(
            config,
            index=index,
            pool=self.pool,
            recycler=self.recycler,
            counters=self.counters,
            shared=self.shared,
            caps=self.caps,
            tls=tls,
            timer=self.http_timer,
        )
        self._drain_deadline = math.inf
        self._stopped = trio.Event()

    # -- public face -------------------------------------------------------------------

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) each binary-protocol socket is bound to (port 0 resolved)."""
        return self.acceptor.addresses

    @property
    def http_addresses(self) -> list[tuple[str, int]]:
        """The (host, port) each HTTP socket is bound to."""
        return self.acceptor.http_addresses

    @property
    def tls_addresses(self) -> list[tuple[str, int]]:
        """The (host, port) each binary-protocol-over-TLS socket is bound to."""
        return self.acceptor.tls_addresses

    @property
    def https_addresses(self) -> list[tuple[str, int]]:
        """The (host, port) each HTTPS socket is bound to."""
        return self.acceptor.https_addresses

    @property
    def tls(self) -> ServerTls | None:
        """The TLS contexts the TLS listeners serve (None: no TLS)."""
        return self.acceptor.tls

    @property
    def stopping(self) -> bool:
        return self.shared.stopping

    def connections(self) -> list[Connection]:
        """The open binary-protocol connections (a snapshot)."""
        return list(self.shared.connections.values())

    @property
    def http_connection_count(self) -> int:
        """How many HTTP connections are open."""
        return len(self.acceptor.http_connections)

    async def wait_http_connections(self, at_most: int = 0) -> None:
        """Wait until at most ``at_most`` HTTP connections are open (woken as each closes)."""
        await self.acceptor.wait_http_connections(at_most)

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
        """Have the stop accept what the listening sockets have queued (a final stop):
        see :meth:`Acceptor.take_queued <trioserver.acceptor.Acceptor.take_queued>`."""
        self.acceptor.take_queued()

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
            log.info(
                "worker %d stopping: %d connections get %.1f s to finish",
                self.index,
                len(shared.connections) + len(self.acceptor.http_connections),
                grace,
            )
            self._stop_serving()
            for conn in list(shared.connections.values()):
                conn.drain(now)
        self._drain_deadline = min(self._drain_deadline, now + grace)
        if self.acceptor.nursery is not None:
            self.acceptor.nursery.cancel_scope.deadline = self._drain_deadline

    def _stop_serving(self) -> None:
        """What every stop begins with: no more accepting, no more application tasks."""
        self.shared.stopping = True
        self.acceptor.stop()  # no more accepting; idle HTTP connections close now
        if self._app_scope is not None:
            self._app_scope.cancel()  # application tasks (on_worker_start) end now
        if self._mesh is not None:
            self._mesh.stop_listening()  # the next worker of this slot takes the name

    async def hand_over(self, channel: socket.socket) -> HandoffCounts:
        """Stop, handing every connection that can move to the worker at the other end
        of ``channel`` (which runs :meth:`adopt_from`); the rest drain as on ``stop()``.

        Stops accepting first and closes its copies of the listening sockets: they are
        to be shared with the new workers (the master's), which accept what their queues
        hold (sockets this worker bound itself reset it when they close). Returns once
        every connection is moved or draining (``wait_stopped`` waits for the drain);
        cancelling it drains whatever has not been acknowledged yet. ``channel`` is one
        end of a ``SOCK_SEQPACKET`` socketpair (``handoff_channel.channel_pair``), made
        non-blocking here; the caller closes it afterwards. See :mod:`trioserver.handoff`
        for what moves.
        """
        shared = self.shared
        if shared.stopping or shared.handoff is not None:
            raise RuntimeError(f"worker {self.index} is already stopping: nothing to hand over")
        start = trio.current_time()
        channel.setblocking(False)  # one inherited over fork may not be
        sender = HandoffSender(channel)
        shared.handoff = sender
        # No new connection, no more application tasks; the open connections go on
        # being served until their turn to move (``stopping`` is set at the end).
        self.acceptor.stop()
        if self._app_scope is not None:
            self._app_scope.cancel()
        if self._mesh is not None:
            self._mesh.stop_listening()
        for _ in self.acceptor.http_connections:
            sender.keep(HandoffKept.HTTP)
        sender.offer(list(shared.connections.values()))
        try:
            await sender.run()
        finally:
            counts = sender.counts(trio.current_time() - start)
            counters = self.counters
            counters.handoff_moved += counts.moved
            counters.handoff_failed += counts.failed
            counters.handoff_kept.update(counts.kept)
            self.stop()  # what stays drains
            log.info(
                "worker %d handed over in %.3f s: %s", self.index, counts.seconds, counts.describe()
            )
        return counts

    async def adopt_from(self, channel: socket.socket) -> None:
        """Serve the connections an old worker hands over on ``channel`` (its
        :meth:`hand_over`) until the channel ends; run it as a task once this worker
        serves. A connection that finds the pool full is refused (counted as
        ``handoff_refused``) and drains in the old worker."""
        channel.setblocking(False)
        counters = self.counters
        adopted, refused = counters.handoff_adopted, counters.handoff_refused
        start = trio.current_time()
        try:
            await adopt(
                channel,
                shared=self.shared,
                pool=self.pool,
                recycler=self.recycler,
                counters=counters,
                caps=self.shared.caps,
            )
        finally:
            log.info(
                "worker %d adopted %d connections in %.3f s (%d refused)",
                self.index,
                counters.handoff_adopted - adopted,
                trio.current_time() - start,
                counters.handoff_refused - refused,
            )

    async def wait_stopped(self) -> None:
        """Wait until the worker has stopped: every connection closed and counted."""
        await self._stopped.wait()

    async def serve(
        self, *, task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until ``stop()`` or cancellation, then drain; ``started`` once accepting."""
        # Codes no route serves share one counter key: clients cannot choose series.
        self.counters.serve_codes(self.router.routes, fold=self.config.metrics.fold_unknown_codes)
        acceptor = self.acceptor
        listeners, _, given_tls, given_https = self._given
        if acceptor.tls is None and (given_tls or given_https or listeners is None):
            acceptor.tls = load_config_tls(self.config)  # raises TlsSetupError (an OSError)
        await acceptor.bind(self._given)
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
                    services.start_soon(self.http_timer.run)
                    services.start_soon(self._flusher.run)
                    if parking_supported():
                        self.shared.parking = parking = ReadParking()
                        services.start_soon(parking.run)
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
                        self.acceptor.nursery = conns
                        self.shared.nursery = conns
                        conns.cancel_scope.deadline = self._drain_deadline
                        await conns.start(self.acceptor.run)
                        log.info(
                            "worker %d serving the binary protocol on %s%s",
                            self.index,
                            ", ".join(f"{h}:{p}" for h, p in self.addresses) or "memory",
                            "".join(f", HTTP on {h}:{p}" for h, p in self.http_addresses),
                        )
                        tls = self.acceptor.tls
                        if tls is not None and (self.tls_addresses or self.https_addresses):
                            log.info(
                                "worker %d serving TLS (%s) on %s",
                                self.index,
                                tls.description or "certificate loaded",
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
