"""One worker: its listeners, connection pool, message queue and timers in one root nursery.

::

    worker = Worker(config, router)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)      # returns once it accepts connections
        ...
        worker.stop()                          # or cancel: both drain

Shape (DESIGN.md, "One worker")::

    serve
    └─ shielded root nursery
       ├─ recycle timer                    (timers.RecycleTimer)
       ├─ handler tasks                    (dispatch.MessageQueue)
       └─ connection nursery               (its deadline is the drain deadline)
          ├─ accept loops, one per listener
          └─ per connection: reader (this task) + writer, inside the connection's
             cancel scope, whose deadline is the heartbeat

Stopping (``stop()``, or cancelling ``serve``) drains: the accept loops end, every
reader stops reading, handlers finish what was read, writers flush every reply and
close; what is still open after ``drain_timeout`` is closed. The tasks run under a
shielded scope so that an outside cancellation turns into this drain instead of
killing connections mid-reply.
"""

from __future__ import annotations

import errno
import logging
import math
import socket as stdlib_socket
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from .config import Address, Config
from .dispatch import MessageQueue, Router
from .framer import (
    Discarded,
    Event,
    FrameDecoder,
    Packet,
    RemoteProtocolError,
    TruncatedPacketError,
)
from .handlers import Services, default_router
from .http import (
    HttpConnectionState,
    StaticSite,
    refuse_http_connection,
    serve_http_connection,
    serve_http_socket,
)
from .nursery_pool import Connection, ConnectionPool, Slot, Wakeup
from .proxy_protocol import ProxyPolicy, ProxyProtocolError, read_proxy_header
from .reasons import DropReason, KickReason
from .sockets import bind_listener
from .stats import Counters, WorkerStatistics
from .timers import ConnectionRules, RecycleTimer

__all__ = ["Worker", "open_listeners", "run_worker"]

log = logging.getLogger("trioserver.worker")

#: accept() errors that mean "out of a resource, try again later" (trio's own list).
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: Back-off after a capacity error: starts small, doubles, capped (never spins).
_BACKOFF_START = 0.1
_BACKOFF_MAX = 1.0
#: Seconds a draining worker waits for the first request of a connection that has
#: sent nothing yet (accepted just before the drain began) before closing it.
_FIRST_REQUEST_GRACE = 1.0
#: Connections accepted in a row before the accept loop yields: a burst of new
#: clients is taken in a few scheduler passes, not one pass per client.
_ACCEPT_BURST = 64


@attrs.frozen(eq=False)
class BoundListener:
    """A listening socket both as trio sees it and as the standard library does.

    The worker accepts on ``sock`` directly (one non-blocking ``accept`` and a
    wait only when nothing is pending), which hands it each connection's own
    standard socket for non-blocking sends; ``listener`` is the same socket as
    a ``trio.SocketListener`` for everything else.
    """

    listener: trio.SocketListener
    sock: stdlib_socket.socket


async def open_listeners(addresses: Sequence[Address], backlog: int) -> list[BoundListener]:
    """Bind each address by hand with SO_REUSEADDR and SO_REUSEPORT.

    SO_REUSEPORT lets every worker process bind the same port after the fork, so
    the kernel balances new connections across them (DESIGN.md, "Scale").
    """
    bound: list[BoundListener] = []
    try:
        for address in addresses:
            sock = bind_listener(address, backlog)
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            bound.append(BoundListener(listener, sock))
    except BaseException:
        for b in bound:
            b.sock.close()
        raise
    return bound


def _format_peer(name: Any) -> str:
    if isinstance(name, tuple):
        host = name[0]
        return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"
    return str(name) or "unix"


def _bound(listeners: Sequence[trio.abc.Listener[Any] | BoundListener]) -> list[tuple[str, int]]:
    out = []
    for listener in listeners:
        if isinstance(listener, BoundListener):
            name = listener.sock.getsockname()
            out.append((name[0], name[1]))
    return out


def _peer_of(stream: trio.abc.Stream) -> str:
    if isinstance(stream, trio.SocketStream):
        try:
            name = stream.socket.getpeername()
        except OSError:
            return "unknown"
        return _format_peer(name)
    peer = getattr(stream, "peer", None)
    return str(peer) if peer is not None else type(stream).__name__


class Worker:
    """One worker's root nursery (see the module docstring)."""

    def __init__(
        self,
        config: Config | None = None,
        router: Router | None = None,
        *,
        services: Services | None = None,
        listeners: Sequence[trio.abc.Listener[Any] | BoundListener] | None = None,
        http_listeners: Sequence[trio.abc.Listener[Any] | BoundListener] | None = None,
        index: int = 0,
    ) -> None:
        """``listeners`` / ``http_listeners``: already-bound listeners to serve the
        binary protocol / HTTP on; when ``listeners`` is given the worker binds
        nothing itself (HTTP too: pass ``http_listeners`` for it); when neither is,
        it binds ``server.listen`` and ``http.listen`` in ``serve``."""
        self.config = config = config if config is not None else Config()
        self.router = router if router is not None else default_router()
        self.services = services if services is not None else Services(config=config)
        self.index = index
        server, conn = config.server, config.connection
        self.pool = ConnectionPool(server.max_connections)
        self._proxy = ProxyPolicy.from_settings(server)  # PROXY protocol (issue 8)
        self.counters = Counters()
        self.rules = ConnectionRules.from_settings(conn)
        self.recycler = RecycleTimer(self.pool, conn.recycle_delay)
        self.queue = MessageQueue(
            self.router,
            self.services,
            self.counters,
            size=server.queue_size,
            handler_tasks=server.handler_tasks,
            max_pending_replies=conn.max_pending_replies,
            max_pending_bytes=conn.max_pending_bytes,
            flush=self._flush,
            defer_flush=self._defer_flush,
        )
        #: Connections with replies from async handlers or other tasks, sent by the
        #: flusher task on the scheduler's next pass (one send each, not one per reply).
        self._to_flush: list[Connection] = []
        self._flusher_wakeup = Wakeup()
        self._given_listeners = list(listeners) if listeners is not None else None
        if http_listeners is not None:
            self._given_http: list[trio.abc.Listener[Any] | BoundListener] | None = list(
                http_listeners
            )
        else:
            self._given_http = [] if listeners is not None else None
        self._listeners: list[trio.abc.Listener[Any] | BoundListener] = []
        self._http_listeners: list[trio.abc.Listener[Any] | BoundListener] = []
        self._site: StaticSite | None = None
        self._connections: dict[int, Connection] = {}
        self._http_connections: dict[int, HttpConnectionState] = {}
        self._accept_scope = trio.CancelScope()
        self._conn_nursery: trio.Nursery | None = None
        self._stopping = False
        self._drain_deadline = math.inf
        self._stopped = trio.Event()

    # -- public face -------------------------------------------------------------------

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) each binary-protocol socket is bound to (port 0 resolved)."""
        return _bound(self._listeners)

    @property
    def http_addresses(self) -> list[tuple[str, int]]:
        """The (host, port) each HTTP socket is bound to."""
        return _bound(self._http_listeners)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def connections(self) -> list[Connection]:
        """The open connections (a snapshot)."""
        return list(self._connections.values())

    def statistics(self) -> WorkerStatistics:
        return self.counters.snapshot(
            self.pool.statistics(),
            list(self._connections.values()),
            self.queue.depth,
            self.queue.capacity,
        )

    def stop(self, grace: float | None = None) -> None:
        """Drain: stop accepting and reading, finish and flush, close after ``grace``.

        ``grace`` defaults to ``server.drain_timeout``; 0 closes everything now.
        Calling it again can only shorten the grace.
        """
        grace = self.config.server.drain_timeout if grace is None else grace
        deadline = trio.current_time() + grace
        if not self._stopping:
            self._stopping = True
            log.info(
                "worker %d stopping: %d connections get %.1f s to finish",
                self.index,
                len(self._connections),
                grace,
            )
            self._accept_scope.cancel()
            now = trio.current_time()
            for conn in self._connections.values():
                conn.draining = True
                if conn.received:
                    conn.settle()  # idle ones close now; busy ones once their work is done
                else:
                    # Accepted a moment ago, its first request perhaps on the way: closing
                    # now would reset it. It gets a short grace, then closes quietly.
                    conn.drained = True
                    conn.scope.deadline = min(conn.scope.deadline, now + _FIRST_REQUEST_GRACE)
            for state in self._http_connections.values():
                state.stop()  # idle ones close now; a sending one after its answers
        self._drain_deadline = min(self._drain_deadline, deadline)
        if self._conn_nursery is not None:
            self._conn_nursery.cancel_scope.deadline = self._drain_deadline

    async def serve(
        self, *, task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until ``stop()`` or cancellation, then drain; ``started`` once accepting."""
        backlog = self.config.server.backlog
        if self._given_listeners is not None:
            self._listeners = list(self._given_listeners)
        else:
            self._listeners = list(await open_listeners(self.config.server.listen, backlog))
        if self._given_http is not None:
            self._http_listeners = list(self._given_http)
        else:
            try:
                self._http_listeners = list(await open_listeners(self.config.http.listen, backlog))
            except BaseException:
                for listener in self._listeners:
                    if isinstance(listener, BoundListener):
                        listener.sock.close()
                raise
        if self._http_listeners:
            self._site = StaticSite.from_settings(self.config.http)
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
        # -- accounts (issue 4): open the store [accounts] names unless services has one --
        from .accounts import open_worker_accounts

        owned_accounts = await open_worker_accounts(self.services, self.config.accounts)
        # -- end accounts ------------------------------------------------------------------
        try:
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as services:
                    services.start_soon(self.recycler.run)
                    services.start_soon(self._flusher)
                    await services.start(self.queue.run)
                    async with trio.open_nursery() as conns:
                        self._conn_nursery = conns
                        conns.cancel_scope.deadline = self._drain_deadline
                        await conns.start(self._accept_all)
                        log.info(
                            "worker %d serving the binary protocol on %s%s",
                            self.index,
                            ", ".join(f"{h}:{p}" for h, p in self.addresses) or "memory",
                            "".join(f", HTTP on {h}:{p}" for h, p in self.http_addresses),
                        )
                        task_status.started()
                    services.cancel_scope.cancel()
        finally:
            self.recycler.recycle_all()
            if owned_accounts is not None:  # accounts (issue 4): close after the last handler
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
                task_status.started()

    async def _accept_loop(
        self, listener: trio.abc.Listener[Any] | BoundListener, http: bool
    ) -> None:
        backoff = _BACKOFF_START
        burst = 0
        try:
            while True:
                raw: stdlib_socket.socket | None = None
                try:
                    if isinstance(listener, BoundListener):
                        try:
                            raw, address = listener.sock.accept()
                        except BlockingIOError:
                            raw = None
                        if raw is None:
                            burst = 0
                            await trio.lowlevel.wait_readable(listener.sock)
                            continue
                        raw.setblocking(False)
                        raw.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
                        stream: trio.abc.Stream | None = None
                        peer = _format_peer(address)
                    else:
                        stream = await listener.accept()
                        peer = _peer_of(stream)
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
                slot = self.pool.acquire()
                assert self._conn_nursery is not None
                if http:
                    if slot is None:
                        if stream is None:
                            assert raw is not None
                            stream = trio.SocketStream(trio.socket.from_stdlib_socket(raw))
                        self.counters.refused += 1
                        self._conn_nursery.start_soon(refuse_http_connection, stream)
                    else:  # a raw socket takes the fast path (serve_http_socket)
                        self._conn_nursery.start_soon(
                            self._http_connection, stream, raw, slot, name=_HTTP_TASK_NAME
                        )
                elif slot is None:
                    self.counters.refused += 1
                    if raw is not None:
                        raw.close()
                    else:
                        assert stream is not None
                        await trio.aclose_forcefully(stream)
                    continue
                else:
                    self._conn_nursery.start_soon(
                        self._connection, stream, raw, peer, slot, name=_TASK_NAME
                    )
                if raw is not None:
                    burst += 1
                    if burst >= _ACCEPT_BURST:  # fairness in an accept storm
                        burst = 0
                        await trio.lowlevel.checkpoint()
        finally:
            with trio.CancelScope(shield=True):
                if isinstance(listener, BoundListener):
                    await trio.aclose_forcefully(listener.listener)
                else:
                    await trio.aclose_forcefully(listener)

    # -- one connection -------------------------------------------------------------------------

    async def _connection(
        self,
        stream: trio.abc.Stream | None,
        raw: stdlib_socket.socket | None,
        peer: str,
        slot: Slot,
    ) -> None:
        """One connection's task: it reads, then waits until all it read is answered.

        Reading is inline here rather than in a coroutine of its own because an
        idle connection is this task's frame and little else: every nested frame
        is paid for by every one of tens of thousands of idle connections.
        """
        now = trio.current_time()
        conn = Connection(slot, slot.sequence, stream, peer, raw=raw)
        self.counters.accepted += 1
        self.rules.open(conn, now)
        self._connections[slot.index] = conn
        decoder = FrameDecoder(self.config.server.max_packet_length)
        receive_size = self.config.server.receive_size
        inbox_size = self.config.server.inbox_size
        queue = self.queue
        waited = True
        data: bytes | bytearray | None
        events: list[Event] | None = None
        packets: list[Packet] | None = None
        clean = False
        try:
            with conn.scope:
                # -- PROXY protocol (issue 8): the client's address, then the bytes after it --
                early: bytes | None = b""
                if self._proxy is not None:
                    early = await self._proxy_header(conn, self._proxy)
                # -- end PROXY protocol --
                while early is not None:  # the reader: bytes → packets → checks → handlers
                    if early:  # bytes that arrived with the PROXY header come first
                        data, early = early, b""
                    elif raw is not None:
                        # Try the socket first; wait on trio only when it is empty.
                        try:
                            data = _recv(raw, receive_size)
                        except OSError:
                            conn.peer_gone = True  # reset by peer: nothing more to deliver
                            conn.scope.cancel()
                            break
                        if data is None:
                            if self._stopping:
                                break  # draining: all that had arrived is read; no more
                            conn.receiving = True
                            try:
                                await trio.lowlevel.wait_readable(raw)
                            finally:
                                conn.receiving = False
                            waited = True
                            continue
                        if not waited:
                            await trio.lowlevel.checkpoint()  # data kept coming: be fair
                        waited = False
                    else:
                        assert stream is not None
                        if self._stopping:
                            break  # draining: answer what was read, read no more
                        conn.receiving = True
                        try:
                            data = await stream.receive_some(receive_size)
                        except trio.BrokenResourceError:
                            conn.peer_gone = True
                            conn.scope.cancel()
                            break
                        finally:
                            conn.receiving = False
                    if not data:
                        _at_eof(conn, decoder)
                        break
                    conn.received = True
                    decoder.receive_data(data)
                    # Take at most what the inbox has room for; the rest stays as bytes.
                    while True:
                        room = inbox_size - len(conn.inbox)
                        try:
                            events = decoder.next_packets(room)
                        except RemoteProtocolError:
                            conn.finish_reason = KickReason.BAD_LENGTH
                            break
                        if not events:
                            break
                        packets = self._check(conn, events)
                        if packets and queue.submit(conn, packets):
                            await queue.schedule(conn)
                        if conn.finish_reason is not None or conn.kick_reason is not None:
                            break
                        if len(events) < room:
                            break  # the buffer holds no further whole packet
                        while len(conn.inbox) >= inbox_size:
                            await conn.wakeup.wait()
                        if conn.writer_running:
                            # Let the writer run between batches: replies pile up only
                            # while the peer really does not read (then it is kicked).
                            await trio.lowlevel.checkpoint()
                    events = packets = None  # a waiting connection keeps no batch alive
                    if conn.finish_reason is not None or conn.kick_reason is not None:
                        break
                conn.reading = False
                while conn.busy:  # answer and send everything that was read
                    await conn.wakeup.wait()
                finished = conn.kick_reason is None and not conn.peer_gone
                if finished and raw is not None and not conn.peer_eof:
                    await _linger(raw)
            clean = True
        except Exception:
            log.exception("bug while serving %s (conn %s); closing it", conn.peer, conn.id)
            clean = True
        finally:
            conn.reading = False
            del self._connections[slot.index]
            reason = conn.kick_reason or conn.finish_reason
            if reason is None and not clean:
                reason = KickReason.DRAIN_TIMEOUT
            elif (
                reason is None
                and conn.scope.cancelled_caught
                and not (conn.peer_gone or conn.drained)
            ):
                reason = self.rules.deadline_reason(conn)
            if reason is not None:
                self.counters.kick(conn, reason)
            self.recycler.rest(slot)  # bumps the sequence: anything queued is now stale
            conn.outbox.clear()
            if conn.writer_scope is not None:
                conn.writer_scope.cancel()
            if raw is not None:
                trio.lowlevel.notify_closing(raw)
                raw.close()
            else:
                assert stream is not None
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)

    async def _http_connection(
        self, stream: trio.abc.Stream | None, raw: stdlib_socket.socket | None, slot: Slot
    ) -> None:
        """One HTTP connection: it holds a slot of the shared pool while it lives.

        A raw socket (from a ``BoundListener``) is served directly, without a trio
        ``SocketStream`` around it; ``stream`` is for other listeners."""
        assert self._site is not None
        self.counters.accepted += 1
        state = HttpConnectionState(draining=self._stopping, by_status=self.counters.http_by_status)
        self._http_connections[slot.index] = state
        try:
            if raw is not None:
                await serve_http_socket(raw, self._site, self.config.http, state)
            else:
                assert stream is not None
                await serve_http_connection(stream, self._site, self.config.http, state)
        finally:
            del self._http_connections[slot.index]
            self.recycler.rest(slot)

    async def _proxy_header(self, conn: Connection, policy: ProxyPolicy) -> bytes | None:
        """PROXY protocol (issue 8): read the header, make ``conn.peer`` the client it names.

        Returns the bytes that followed the header, or None when the connection is
        refused (untrusted source, no valid header in time): counted, logged, closed.
        """
        raw, stream, size = conn.raw, conn.stream, self.config.server.receive_size

        async def receive() -> bytes | bytearray:
            if raw is None:
                assert stream is not None
                return await stream.receive_some(size)
            while (data := _recv(raw, size)) is None:
                await trio.lowlevel.wait_readable(raw)
            return data

        conn.receiving = True  # a drain closes a connection still waiting for its header
        try:
            with trio.move_on_after(policy.timeout):
                conn.peer, early = await read_proxy_header(receive, policy, conn.peer)
                return early
            why = f"sent no complete PROXY header within {policy.timeout:g} s"
        except ProxyProtocolError as exc:
            why = str(exc)
        except (OSError, trio.BrokenResourceError):
            why = "went away before its PROXY header was complete"
        finally:
            conn.receiving = False
        self.counters.proxy_refused += 1
        log.info("refused %s (conn %s): %s", conn.peer, conn.id, why)
        conn.peer_gone = True  # nothing to deliver (and no linger); counted above, not a kick
        return None

    def _check(self, conn: Connection, events: list[Event]) -> list[Packet]:
        """Count and check one batch of decoded events; the packets a handler should get.

        Applies the flood rule to every completed packet, drops (and counts) bad
        CRCs, unknown codes and wrong sizes, and moves the heartbeat deadline once
        for the batch if it held a refreshing packet.
        """
        rules = self.rules
        flood_check = rules.flood_check
        any_refreshes = rules.any_packet_refreshes
        counters = self.counters
        by_code = counters.packets_by_code
        routes = self.router.routes
        now = trio.current_time()
        refreshed = False
        packets: list[Packet] = []
        for event in events:
            code = event.code
            by_code[code] += 1
            if flood_check and rules.is_flood(conn, now):
                # Drop this packet, answer what came before it, then close.
                conn.finish_reason = KickReason.FLOOD
                break
            if type(event) is Discarded:
                counters.drop(conn, DropReason(event.reason.value), code)
                continue
            assert type(event) is Packet
            route = routes.get(code)  # Router.check, inlined: this runs for every packet
            if route is None:
                counters.drop(conn, DropReason.UNKNOWN_CODE, code)
                continue
            size = route.body_size
            if size is not None and len(event.body) != size:
                counters.drop(conn, DropReason.BAD_BODY_SIZE, code)
                continue
            if code == 0 or any_refreshes:
                refreshed = True
            packets.append(event)
        if refreshed:
            rules.refresh(conn, now)
        return packets

    def _flush(self, conn: Connection) -> None:
        """Send what the outbox holds: straight to the socket (or to a stream with
        ``send_nowait``, see ``NonBlockingSend``) if it takes it all, else through
        a writer task (started here) that waits for room."""
        outbox = conn.outbox
        if not outbox or conn.writer_running or conn.stale:
            return
        raw = conn.raw
        # getattr, not isinstance(stream, NonBlockingSend): a runtime Protocol check
        # costs microseconds on every flush.
        send = raw.send if raw is not None else getattr(conn.stream, "send_nowait", None)
        if send is not None:
            data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
            try:
                sent = send(data)
            except BlockingIOError:
                sent = 0
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                outbox.clear()
                conn.peer_gone = True  # reset or broken pipe: nothing more to deliver
                conn.scope.cancel()
                return
            if sent == len(data):
                outbox.clear()
                conn.pending_replies = 0
                conn.pending_bytes = 0
                return
            outbox.clear()
            outbox.append(data[sent:])
            conn.pending_bytes -= sent
        assert self._conn_nursery is not None
        conn.writer_running = True
        self._conn_nursery.start_soon(self._writer, conn)

    def _defer_flush(self, conn: Connection) -> None:
        """Send ``conn``'s replies once the current task waits: by then an async
        handler has either made all the replies it will make without waiting (and
        they go out together) or it waits, and they must go now."""
        if not conn.flush_queued and conn.outbox:
            conn.flush_queued = True
            self._to_flush.append(conn)
            self._flusher_wakeup.wake()

    async def _flusher(self) -> None:
        """Flush the connections ``_defer_flush`` listed, one scheduler pass later."""
        while True:
            await self._flusher_wakeup.wait()
            batch, self._to_flush = self._to_flush, []
            for conn in batch:
                conn.flush_queued = False
                self._flush(conn)

    async def _writer(self, conn: Connection) -> None:
        """Send what the outbox holds, waiting for the peer to make room, until it is empty.

        It runs in the worker's connection nursery, not in one of its own: a
        connection pays for a writer task only while a send has to wait.
        """
        outbox = conn.outbox
        raw = conn.raw
        try:
            with trio.CancelScope() as conn.writer_scope:
                if conn.stale:  # closed before this task first ran
                    return
                while outbox:
                    count = len(outbox)
                    data = outbox[0] if count == 1 else b"".join(outbox)
                    outbox.clear()
                    try:
                        if raw is not None:
                            await _send_all_raw(raw, data)
                        else:
                            assert conn.stream is not None
                            await conn.stream.send_all(data)
                    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                        conn.peer_gone = True  # the peer is gone; nothing more to deliver
                        conn.scope.cancel()
                        return
                    conn.pending_replies -= count
                    conn.pending_bytes -= len(data)
                conn.pending_replies = 0
                conn.pending_bytes = 0
        finally:
            conn.writer_scope = None
            conn.writer_running = False
            conn.settle()


def _at_eof(conn: Connection, decoder: FrameDecoder) -> None:
    """The peer sent EOF: a half-close, or (mid-packet) a truncated packet."""
    conn.peer_eof = True
    decoder.receive_data(b"")
    try:
        decoder.next_packet()
    except TruncatedPacketError:
        conn.finish_reason = KickReason.TRUNCATED


def _recv(raw: stdlib_socket.socket, size: int) -> bytes | None:
    """``raw.recv``, or None when nothing is there.

    A function of its own so that the would-block exception's traceback pins
    this short-lived frame, not the reader's: an exception raised in a frame
    makes Python keep a full frame object for it, about 400 bytes for each
    idle connection's reader otherwise.
    """
    try:
        return raw.recv(size)
    except BlockingIOError:
        return None


async def _send_all_raw(raw: stdlib_socket.socket, data: bytes) -> None:
    """Send all of ``data`` on a non-blocking socket, waiting for room as needed."""
    view = memoryview(data)
    while view:
        try:
            sent = raw.send(view)
        except BlockingIOError:
            sent = 0
        if not sent:
            await trio.lowlevel.wait_writable(raw)
            continue
        view = view[sent:]
    await trio.lowlevel.checkpoint_if_cancelled()


#: How long a finished connection keeps reading (and discarding) after its last
#: reply, so the peer gets every reply instead of a reset (nginx's lingering close).
_LINGER_TIMEOUT = 2.0
_LINGER_MAX_BYTES = 1 << 20


async def _linger(raw: stdlib_socket.socket) -> None:
    """Half-close our side, then drain the peer's until its EOF (bounded in time and bytes).

    Closing a socket whose receive buffer still holds unread bytes makes Linux
    send a reset, which can destroy replies the peer has not read yet: a client
    that pipelined past the point where we stopped reading (a drain, a flood
    rule) would lose answers it was owed.
    """
    try:
        raw.shutdown(stdlib_socket.SHUT_WR)
    except OSError:
        return
    discarded = 0
    with trio.move_on_after(_LINGER_TIMEOUT):
        while discarded < _LINGER_MAX_BYTES:
            try:
                data = raw.recv(65536)
            except BlockingIOError:
                data = None
            except OSError:
                return
            if data is None:
                await trio.lowlevel.wait_readable(raw)
                continue
            if not data:
                return
            discarded += len(data)


def run_worker(
    config: Config, router: Router | None = None, *, services: Services | None = None
) -> None:
    """Run one worker in this process until SIGTERM (drain) or SIGINT/SIGQUIT (fast stop)."""
    trio.run(serve_until_signalled, Worker(config, router, services=services))


def _task_name(method: Any) -> str:
    return f"{method.__module__}.{method.__qualname__}"


#: Connection tasks' names, given rather than left to trio, which would format the
#: same string anew for every task: 85 bytes per idle connection.
_TASK_NAME = _task_name(Worker._connection)
_HTTP_TASK_NAME = _task_name(Worker._http_connection)


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
                    worker.stop()
                else:
                    log.info("%s: stopping now", name)
                    worker.stop(grace=0)

    async with trio.open_nursery() as nursery:
        await nursery.start(watch)
        await worker.serve()
        nursery.cancel_scope.cancel()
