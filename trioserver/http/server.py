"""The trio adapter: moves bytes between one stream and the sans-I/O parser and policy.

::

    site = StaticSite.from_settings(config.http)
    await serve_http(transport, site, config.http)           # one connection, to its end
    await serve_http_connection(stream, site, config.http)   # the same on a trio stream
    await serve_http_socket(sock, site, config.http)         # the same on a raw socket
    await refuse_http_connection(transport)                  # worker full: 503 and close
    begun = answer_at_once(sock, site, config.http)          # just accepted: answered here
    # (None: done) unless it returns what it read: then serve_http(..., begun=begun)
    upgraded = await serve_http(transport, site, settings, websocket=policy)
    # not None: a WebSocket handshake was answered 101; the transport is the caller's now

One task per connection (none for one answered at accept), one loop: receive,
parse every request the bytes completed, decide every response, send them in one
write, repeat. Pipelined
requests are therefore answered in order with one ``send_all`` for all the small
responses of one receive; a file too large for the cache flushes what is pending
together with its head and goes out with ``os.sendfile`` (see :func:`_send_file`).

Every transport goes through the worker's seam (:mod:`trioserver.transport`):
a raw socket (what the worker uses), any trio stream, the testing kit's links.
The seam's socket transport exists because a trio ``SocketStream`` pays for
generality on every call: a receive is a cancellation check, a failed ``recv``,
a wait and a second ``recv``, then a scheduler pass, and a send is another
pass. On a raw socket a keep-alive request is one wait for readability (the only
scheduler pass, and the only checkpoint: timeouts and fairness hang on it), one
``recv`` and one ``send``; a receive waits before it reads, because after an
answer the next request is never there yet (see ``_Connection._loop``).

Time limits are one deadline per connection, kept by the worker's
:class:`~trioserver.timers.ExpiryTimer` (one heap, one task: no cancel scope per
connection):

==========================  ================================================  ==========
while                       deadline                                          then
==========================  ================================================  ==========
waiting for a request head  its first byte (first request: the connection's   408, close
                            start) + ``header_timeout``; not moved by later
                            bytes, so a one-byte-a-second client is closed
idle between requests       last response + ``keep_alive_timeout``            close
sending a file from disk    last progress + ``send_timeout``                  close
sending from memory         the deadline of the wait before (at least half    close
                            ``keep_alive_timeout`` away when sending starts)
==========================  ================================================  ==========

Moving the deadline later is a float store; the timer finds out when the earlier
time comes. When it passes, the timer wakes the connection from whatever it waits
for: on a raw socket by ``notify_closing`` (trio's, and the worker's read parking's)
and, when nothing more is to be said, ``shutdown``, so whatever the task does next
fails at once; on other transports by cancelling the connection's one cancel scope.
A connection served without a worker (:func:`serve_http_connection`) gets a timer
of its own.

Failures: a policy exception is our bug: logged on ``trioserver.http`` with its
traceback, answered 500, and the connection closes; any other exception from the
adapter is logged and closes the connection. The transport turns a socket's OSErrors
(reset, broken pipe) into ``trio.BrokenResourceError``, as a stream's would.
Nothing but ``Cancelled`` leaves :func:`serve_http`, so a bad request never
takes the worker down.
A connection closed after a protocol error first shuts its sending side and reads
what the client still sends for a moment ("lingering close"), so the client sees
the error instead of a reset.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import math
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio

from ..peer import Peer
from ..timers import ExpiryTimer
from ..transport import SocketTransport, StreamTransport, Transport, as_transport, linger
from .files import FileRange
from .parser import ConnectionClosed, Event, HttpConnection, Rejected, Request
from .policy import Response, StaticSite, service_unavailable
from .websocket import Accepted, WebSocketPolicy

if TYPE_CHECKING:
    from trioserver.config import HttpSettings

__all__ = [
    "Begun",
    "HttpConnectionState",
    "Upgraded",
    "answer_at_once",
    "finish_answer",
    "refuse_http_connection",
    "serve_http",
    "serve_http_connection",
    "serve_http_socket",
]

log: Final = logging.getLogger("trioserver.http")
access_log: Final = logging.getLogger("trioserver.http.access")

#: Most bytes read in one receive.
RECEIVE_SIZE: Final = 65536
#: Pending small responses are written once they reach this many bytes.
COALESCE_BYTES: Final = 65536
#: Chunk size when a file cannot go by sendfile (read in a thread, then sent).
COPY_CHUNK: Final = 256 * 1024
#: Most bytes one sendfile call is asked for, and between two scheduler checkpoints
#: on a socket that never blocks (loopback), so other connections are not starved.
SENDFILE_CHUNK: Final = 4 * 1024 * 1024
#: Seconds given to a goodbye (408, 503, lingering close) before closing regardless.
FAREWELL_TIMEOUT: Final = 1.0
#: Most bytes read and thrown away during a lingering close.
LINGER_BYTES: Final = 256 * 1024
#: Seconds a draining worker still waits for the first request of a connection it has
#: just accepted (that request is most likely on its way; closing now would fail it).
FIRST_REQUEST_GRACE: Final = 1.0


class _FileShrank(Exception):
    """A file got shorter while it was being sent: the promised length cannot be kept."""


class Stoppable(Protocol):
    """What :class:`HttpConnectionState` asks of the connection it stands for."""

    def interrupt(self) -> None:
        """Close now without a word (the worker drains, or gives the slot up)."""

    def shorten(self, deadline: float) -> None:
        """Expire no later than ``deadline``."""


@attrs.define(eq=False)
class HttpConnectionState:
    """What the worker sees of one HTTP connection, and how it asks it to finish.

    ``sending`` is True while responses are being written; a draining worker
    cancels a connection that is not sending (idle keep-alive, or mid-request
    head) and sets ``draining`` on the others, which then close after the
    responses in hand. A connection with no request yet (``fresh``) gets
    ``FIRST_REQUEST_GRACE`` seconds for its first. ``by_status`` counts
    responses by status code.
    """

    sending: bool = False
    draining: bool = False
    fresh: bool = True
    by_status: collections.Counter[int] | None = None
    #: The connection while it serves HTTP (None before, and after its loop ended).
    connection: Stoppable | None = None

    @property
    def idle(self) -> bool:
        """Between requests, waiting for the next (or in its head): safe to give up."""
        return (
            not self.sending
            and not self.fresh
            and not self.draining
            and self.connection is not None
        )

    def give_up(self) -> None:
        """Close an idle keep-alive connection now (the pool runs low); it says nothing."""
        self.draining = True
        assert self.connection is not None
        self.connection.interrupt()

    def stop(self) -> None:
        """Finish: at once if idle or mid-head, after the answers in hand if sending."""
        self.draining = True
        if self.sending or self.connection is None:
            return
        if self.fresh:
            self.connection.shorten(trio.current_time() + FIRST_REQUEST_GRACE)
        else:
            self.connection.interrupt()


@attrs.frozen
class Begun:
    """What :func:`answer_at_once` read of a connection it could not answer by itself:
    :func:`serve_http` goes on from here (``events`` first, then the socket)."""

    parser: HttpConnection
    events: list[Event]


def answer_at_once(
    sock: socket.socket,
    site: StaticSite,
    settings: HttpSettings,
    by_status: collections.Counter[int] | None = None,
    websocket: WebSocketPolicy | None = None,
    parser: HttpConnection | None = None,
) -> Begun | bytes | None:
    """Answer a just-accepted raw-socket connection without a task of its own, if it can be.

    The common case of connection-per-request traffic (HTTP/1.0, ``Connection:
    close``): by the time a loaded worker accepts a connection its request is there,
    and the whole exchange is one ``recv``, one ``send`` and the close, as nginx does
    it. So when the bytes there are exactly one complete request that asks to close,
    and its answer is in memory, it is answered here: None (done, closed), or the bytes
    the socket did not take (:func:`finish_answer` sends them). Anything else (nothing
    there yet, keep-alive, a file from disk, a WebSocket path, a protocol error) is a
    :class:`Begun` for :func:`serve_http`, which then behaves exactly as if it had read
    those bytes itself. The access log needs the task (a duration, a peer): with it on,
    the caller does not come here. ``parser``: the one a look before found nothing for.
    """
    if parser is None:
        parser = HttpConnection(
            max_request_line=settings.max_request_line,
            max_header_size=settings.max_header_size,
            max_body_size=settings.max_body_size,
        )
    try:
        data = sock.recv(RECEIVE_SIZE)
    except BlockingIOError:
        return Begun(parser, [])
    except OSError:  # reset before a word
        sock.close()
        return None
    events = parser.receive_events(data)
    if len(events) != 1 or parser.in_request:
        return Begun(parser, events)
    request = events[0]
    if type(request) is not Request:
        if type(request) is ConnectionClosed:  # EOF before a request: nothing to say
            sock.close()
            return None
        return Begun(parser, events)  # Rejected: answered, then a lingering close
    if request.keep_alive or (websocket is not None and request.target.startswith(websocket.path)):
        return Begun(parser, events)
    try:
        response = site.respond(request)
    except Exception:
        log.exception("bug answering %r; sent 500", request)
        response = site.error(500)
    body = response.body
    if type(body) is not bytes or not response.close:
        return Begun(parser, events)  # decided again there (the policy is pure)
    if by_status is not None:
        by_status[response.status] += 1
    payload = response.head + body
    try:
        sent = sock.send(payload)
    except BlockingIOError:
        sent = 0
    except OSError:  # the peer went away
        sent = len(payload)
    if sent == len(payload):
        sock.close()
        return None
    return payload[sent:]


async def finish_answer(sock: socket.socket, rest: bytes, settings: HttpSettings) -> None:
    """Send what :func:`answer_at_once` could not, then close (a response from memory must
    be taken within the keep-alive timeout)."""
    try:
        with trio.move_on_after(settings.keep_alive_timeout):
            await SocketTransport(sock).send_all(rest)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        sock.close()


@attrs.frozen
class Upgraded:
    """A WebSocket handshake was accepted (its 101 sent): the connection speaks it now."""

    request: Request
    accepted: Accepted
    #: Bytes the client sent right after its handshake (already WebSocket frames).
    trailing: bytes


async def serve_http(
    transport: Transport,
    app: StaticSite,
    settings: HttpSettings,
    state: HttpConnectionState | None = None,
    *,
    peer: Peer | None = None,
    websocket: WebSocketPolicy | None = None,
    timer: ExpiryTimer | None = None,
    begun: Begun | None = None,
) -> Upgraded | None:
    """Serve HTTP/1.1 requests on ``transport`` until the connection ends; then close it.

    Returns normally on every peer behaviour and on our own bugs (logged); only
    cancellation propagates. The transport is closed when this returns, unless a
    request for ``websocket``'s path was accepted: then the 101 is sent and the
    :class:`Upgraded` returned, and the open transport is the caller's. ``timer``
    keeps the connection's deadlines (a worker's, running); without one the
    connection runs a timer of its own. ``begun``: what :func:`answer_at_once` read.
    """
    if timer is None:
        async with trio.open_nursery() as nursery:
            timer = ExpiryTimer()
            nursery.start_soon(timer.run)
            try:
                return await serve_http(
                    transport,
                    app,
                    settings,
                    state,
                    peer=peer,
                    websocket=websocket,
                    timer=timer,
                    begun=begun,
                )
            finally:
                nursery.cancel_scope.cancel()
    connection = _Connection(
        transport, app, settings, state or HttpConnectionState(), peer, websocket, timer, begun
    )
    upgraded = None
    try:
        await connection.serve()
        upgraded = connection.upgraded
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the peer went away
    except _FileShrank as exc:
        log.warning("closing an HTTP connection: %s", exc)
    except Exception:
        log.exception("HTTP connection failed; closing it")
    finally:
        if upgraded is None:
            if type(transport) is SocketTransport:
                # This task was the socket's only user and waits on it no more, so trio's
                # notify_closing (a waiter record, an exception object and an epoll_ctl
                # that closing does anyway) has nobody to wake.
                transport.sock.close()
            else:
                await transport.aclose()
    return upgraded


async def serve_http_connection(
    stream: trio.abc.Stream,
    app: StaticSite,
    settings: HttpSettings,
    state: HttpConnectionState | None = None,
) -> None:
    """:func:`serve_http` on a trio stream (closed when this returns)."""
    await serve_http(as_transport(stream), app, settings, state)


async def serve_http_socket(
    sock: socket.socket,
    app: StaticSite,
    settings: HttpSettings,
    state: HttpConnectionState | None = None,
) -> None:
    """:func:`serve_http` on a connected, non-blocking standard socket (closed when this
    returns)."""
    await serve_http(SocketTransport(sock), app, settings, state)


async def refuse_http_connection(transport: Transport | trio.abc.Stream) -> None:
    """Answer 503 (worker full) without reading the request, then close."""
    if isinstance(transport, trio.abc.Stream):
        transport = StreamTransport(transport)
    try:
        with trio.move_on_after(FAREWELL_TIMEOUT):
            await transport.send_all(service_unavailable(time.time()))
            await linger(transport, FAREWELL_TIMEOUT, LINGER_BYTES)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await transport.aclose()


class _Connection:
    """One connection: its loop, its parser and its deadline (an ``ExpiryTimer`` owner).

    ``sock`` is the transport's socket (standard or trio) when files may go by
    ``os.sendfile``, else None.
    """

    def __init__(
        self,
        transport: Transport,
        site: StaticSite,
        settings: HttpSettings,
        state: HttpConnectionState,
        peer: Peer | None,
        websocket: WebSocketPolicy | None,
        timer: ExpiryTimer,
        begun: Begun | None = None,
    ) -> None:
        self.state = state
        self.websocket = websocket
        #: Set once a WebSocket handshake was answered 101 (the loop then ends).
        self.upgraded: Upgraded | None = None
        self.transport = transport
        #: Read with a yield first (see :meth:`_loop`); False: wait for readability first.
        self.eager = True
        self.send_all = transport.send_all
        self.sock = sock = transport.socket
        self.timer = timer
        #: The timer's (see ``Expiring``).
        self.armed = math.inf
        self.timer_entry: list[Any] | None = None
        #: Woken by the timer or the worker: every wait from now on raises.
        self.woken = False
        #: Woken because the deadline passed (not by the worker).
        self.expired = False
        #: What a wake cancels on a transport other than a raw socket; a raw socket is
        #: woken through trio's ``notify_closing`` instead (no cancel scope to pay for).
        self.scope = None if type(transport) is SocketTransport else trio.CancelScope()
        self.site = site
        self.settings = settings
        #: Events already parsed (by ``answer_at_once``), answered before reading.
        self.begun_events: list[Event] | None = None
        if begun is not None:
            self.parser = begun.parser
            if begun.events:
                self.begun_events = begun.events
            else:
                self.eager = False  # it just found nothing there: wait at once
        else:
            self.parser = HttpConnection(
                max_request_line=settings.max_request_line,
                max_header_size=settings.max_header_size,
                max_body_size=settings.max_body_size,
            )
        if not settings.access_log:
            self.peer = "-"
        else:
            self.peer = peer.host if peer is not None else _peer_name(sock)
        #: When the current wait ends: header, idle or send deadline (see the module
        #: docstring's table).
        self.deadline = 0.0
        #: The number of the request whose header clock is running.
        self.head_started = 1
        self.outcome = _Outcome.CLOSE

    async def serve(self) -> None:
        """Run the loop with the connection's deadline armed; after a timeout, say 408 if
        a request head was cut short, else close without a word."""
        state = self.state
        timer = self.timer
        now = trio.current_time()
        self.deadline = now + self.settings.header_timeout
        if state.draining:  # accepted just before the drain began
            self.deadline = min(self.deadline, now + FIRST_REQUEST_GRACE)
        timer.arm(self)
        state.connection = self
        scope = self.scope
        try:
            if scope is None:
                await self._loop()
            else:
                with scope:
                    await self._loop()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            if not self.woken:
                raise
        finally:
            timer.discard(self)
            state.connection = None
        if self.woken:
            if self.expired and self._says_408():
                timeout = self.site.error(408)
                assert isinstance(timeout.body, bytes)
                with trio.move_on_after(FAREWELL_TIMEOUT):
                    await self.send_all(timeout.head + timeout.body)
                    # The client is still sending its head: closing on unread bytes
                    # would reset the connection and could destroy the 408.
                    await linger(self.transport, FAREWELL_TIMEOUT, LINGER_BYTES)
            return  # an idle, stopped or stuck connection closes without a word
        if self.outcome is _Outcome.LINGER:
            await linger(self.transport, FAREWELL_TIMEOUT, LINGER_BYTES)

    def _says_408(self) -> bool:
        """A timeout is answered 408 when a request head was cut short, nothing was being
        sent, and the worker is not stopping (then the close says it all)."""
        state = self.state
        return self.parser.in_request and not state.sending and not state.draining

    # -- what the timer and the worker call (never from this connection's task) ----------

    def expire(self) -> None:
        """The deadline passed (the timer calls it)."""
        self.expired = True
        self._wake(talk=self._says_408())

    def interrupt(self) -> None:
        """Close now without a word (the worker drains, or gives the slot up)."""
        self._wake(talk=False)

    def shorten(self, deadline: float) -> None:
        """Expire no later than ``deadline``."""
        if deadline < self.deadline:
            self.deadline = deadline
            self.timer.arm(self)

    def _wake(self, *, talk: bool) -> None:
        """Make the task's current and every later wait raise; ``talk``: it still sends a
        408 (a raw socket stays usable; otherwise it is shut down both ways, so even a
        task that was not waiting fails at its next send or wait)."""
        if self.woken:
            return
        self.woken = True
        if self.scope is not None:
            self.scope.cancel()
            return
        transport = self.transport
        assert isinstance(transport, SocketTransport)
        sock = transport.sock
        if not talk:
            with contextlib.suppress(OSError):  # the peer reset it already
                sock.shutdown(socket.SHUT_RDWR)
        if transport.parking is not None:  # a quiet reader waits in the worker's parking
            transport.parking.notify_closing(sock)
        trio.lowlevel.notify_closing(sock)

    async def _receive_waiting(self) -> bytes:
        """Wait for readability, then read; raises ``ClosedResourceError`` once ``woken``
        (the timer or the worker woke the connection) instead of waiting."""
        transport = self.transport
        while True:
            if self.woken:
                raise trio.ClosedResourceError("the connection's time is up")
            await transport.wait_readable()
            data = transport.receive_nowait(RECEIVE_SIZE)
            if data is not None:
                return data

    async def _loop(self) -> None:
        """Receive, parse, answer everything the bytes completed, in one write; repeat.

        Every receive is a checkpoint (timeouts and fairness hang on it). It either
        yields to the scheduler once and then reads ("eager"), or waits for
        readability and then reads. Eager is right under load: by the time every
        other connection has had its turn, the client has sent its next request, and
        a plain yield costs less than a wait (``epoll_ctl``, then the event's round
        trip through ``epoll_wait``). Waiting is right when the connection is quiet.
        So it reads eagerly after every receive that found data that way or after a
        wait, and waits right away after an eager read that found nothing. The eager
        read is inline here: one coroutine fewer per request.
        """
        parser = self.parser
        site = self.site
        timer = self.timer
        receive_nowait = self.transport.receive_nowait
        receive_waiting = self._receive_waiting
        checkpoint = trio.lowlevel.checkpoint
        eager = self.eager
        send_all = self.send_all
        send_nowait = self.transport.send_nowait
        receive_events = parser.receive_events
        respond = site.respond
        now = trio.lowlevel.current_clock().current_time
        access = self.settings.access_log
        idle = self.settings.keep_alive_timeout
        half_idle = idle / 2
        header_timeout = self.settings.header_timeout
        keep_open, close, linger = _KEEP_OPEN, _CLOSE, _LINGER
        websocket = self.websocket
        ws_path = websocket.path if websocket is not None else None
        upgraded: Upgraded | None = None
        state = self.state
        by_status = state.by_status
        begun, self.begun_events = self.begun_events, None
        while True:
            if begun is not None:
                events, begun = begun, None
            elif eager:
                await checkpoint()
                if self.woken:
                    raise trio.ClosedResourceError("the connection's time is up")
                data = receive_nowait(RECEIVE_SIZE)
                if data is None:
                    eager = False
                    data = await receive_waiting()
                events = receive_events(data)
            else:
                eager = True
                events = receive_events(await receive_waiting())
            if events:
                arrived = now()
                # Answers from memory go out before this deadline (moved only later: the
                # timer needs no word of it).
                if self.deadline < arrived + half_idle and not state.draining:
                    self.deadline = arrived + idle
                state.sending = True
                state.fresh = False
                out: list[bytes] = []
                size = 0
                outcome = keep_open
                for event in events:
                    if type(event) is Request:
                        started = now() if access else 0.0
                        if (
                            ws_path is not None
                            and event.target.startswith(ws_path)
                            and websocket is not None
                            and websocket.wants(event)
                        ):
                            response, upgraded = self._handshake(event, websocket)
                        else:
                            try:
                                response = respond(event)
                            except Exception:
                                log.exception("bug answering %r; sent 500", event)
                                response = site.error(500)
                        body = response.body
                        if type(body) is bytes:
                            head = response.head
                            out.append(head)
                            out.append(body)
                            size += len(head) + len(body)
                            if size >= COALESCE_BYTES:
                                await send_all(b"".join(out))
                                out = []
                                size = 0
                        else:
                            response = await self._send_file(event, response, out)
                            out = []
                            size = 0
                            arrived = now()  # the idle clock starts after the file
                        if by_status is not None:
                            by_status[response.status] += 1
                        if access:
                            self._log_access(event, response, now() - started)
                        if upgraded is not None:
                            outcome = _UPGRADE
                            break
                        if response.close:
                            outcome = close
                            break
                    elif type(event) is Rejected:
                        response = site.error(event.status)
                        out.append(response.head)
                        out.append(response.body if type(response.body) is bytes else b"")
                        outcome = linger
                        break
                    else:  # ConnectionClosed
                        outcome = close
                        break
                if out:
                    # Tried before awaiting: a reply that fits (nearly all) costs no coroutine.
                    data = b"".join(out)
                    sent = send_nowait(data)
                    if sent != len(data):
                        await send_all(memoryview(data)[sent:])
                state.sending = False
                if upgraded is not None:
                    self.upgraded = upgraded
                    return
                if state.draining:
                    outcome = close  # the worker is stopping: this was the last answer
                if outcome is not keep_open:
                    self.outcome = outcome
                    return
                if parser.in_request:
                    if parser.requests_started > self.head_started:
                        self.head_started = parser.requests_started
                        self.deadline = now() + header_timeout
                else:
                    self.deadline = arrived + idle
            elif parser.in_request and parser.requests_started > self.head_started:
                self.head_started = parser.requests_started
                self.deadline = now() + header_timeout
            if self.deadline < self.armed:
                timer.arm(self)

    def _handshake(
        self, request: Request, policy: WebSocketPolicy
    ) -> tuple[Response, Upgraded | None]:
        """The answer to a request for the WebSocket path: 101 and the upgrade, or a
        refusal that closes (``trioserver.http.websocket`` has the rules)."""
        if self.state.draining:
            return self.site.error(503), None
        decision = policy.decide(request)
        if type(decision) is Accepted:
            upgraded = Upgraded(request, decision, self.parser.trailing_data)
            return Response(101, decision.response, b"", False), upgraded
        assert not isinstance(decision, Accepted)
        log.debug("WebSocket handshake refused with %d: %s", decision.status, decision.detail)
        response = self.site.error(decision.status, headers=decision.headers)
        return response, None

    async def _send_file(
        self, request: Request, response: Response, pending: list[bytes]
    ) -> Response:
        """Send ``pending``, then ``response`` whose body is on disk; return what was sent."""
        site = self.site
        body = response.body
        assert isinstance(body, FileRange)
        fd = site.open_range(body)
        if fd is None:  # the file changed since the cache looked: decide again
            response = site.respond(request, recheck=True)
            body = response.body
            fd = site.open_range(body) if isinstance(body, FileRange) else None
            if isinstance(body, FileRange) and fd is None:
                log.warning("file %r keeps changing; sent 500", body.path)
                response = site.error(500)
                body = response.body
            if isinstance(body, bytes):
                await self.send_all(b"".join((*pending, response.head, body)))
                return response
        assert fd is not None and isinstance(body, FileRange)
        self._send_deadline(trio.current_time() + self.settings.send_timeout)
        try:
            head = b"".join((*pending, response.head))
            sock = self.sock
            if sock is not None and body.length:
                await self._sendfile(sock, head, fd, body.offset, body.length)
            else:
                await self.send_all(head)
                await self._copy(fd, body.offset, body.length)
        finally:
            os.close(fd)
        return response

    async def _sendfile(
        self,
        sock: socket.socket | trio.socket.SocketType,
        head: bytes,
        fd: int,
        offset: int,
        length: int,
    ) -> None:
        """Head with MSG_MORE (it leaves with the first data), then the file by sendfile.

        ``os.sendfile`` raises plain OSErrors when the peer goes away; they are
        turned into BrokenResourceError like every other transport error.
        """
        try:
            send_timeout = self.settings.send_timeout
            await self.transport.send_all(head, more=True)
            out = sock.fileno()
            since_checkpoint = 0
            while length:
                try:
                    sent = os.sendfile(out, fd, offset, min(length, SENDFILE_CHUNK))
                except BlockingIOError:
                    await self.transport.wait_writable()
                    continue
                if sent == 0:
                    raise _FileShrank(f"file shrank by {length} bytes while being sent")
                offset += sent
                length -= sent
                self.deadline = trio.current_time() + send_timeout  # later: a float store
                since_checkpoint += sent
                if since_checkpoint >= SENDFILE_CHUNK:
                    since_checkpoint = 0
                    await trio.lowlevel.checkpoint()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
            raise trio.BrokenResourceError(f"peer went away: {exc}") from exc

    async def _copy(self, fd: int, offset: int, length: int) -> None:
        """Send a file range over a stream that is not a socket: read in a thread, send."""
        send_timeout = self.settings.send_timeout
        while length:
            chunk = await trio.to_thread.run_sync(os.pread, fd, min(length, COPY_CHUNK), offset)
            if not chunk:
                raise _FileShrank(f"file shrank by {length} bytes while being sent")
            await self.send_all(chunk)
            offset += len(chunk)
            length -= len(chunk)
            self.deadline = trio.current_time() + send_timeout

    def _send_deadline(self, deadline: float) -> None:
        """The deadline while a file goes out (it may be earlier than the one before)."""
        self.deadline = deadline
        if deadline < self.armed:
            self.timer.arm(self)

    def _log_access(self, request: Request, response: Response, duration: float) -> None:
        """One access line; ``ops.logs`` formats it (combined log format, or JSON fields)."""
        headers = request.headers
        access_log.info(
            '%s "%s %s HTTP/%s" %d %d',
            self.peer,
            request.method.decode("ascii", "replace"),
            request.target.decode("latin-1"),
            request.version.decode("ascii"),
            response.status,
            response.body_length,
            extra={
                "referrer": headers.get(b"referer", b"").decode("latin-1"),
                "user_agent": headers.get(b"user-agent", b"").decode("latin-1"),
                "duration": duration,
            },
        )


class _Outcome(enum.Enum):
    """What a batch of responses leaves the connection to do."""

    KEEP_OPEN = "keep open"
    CLOSE = "close"  # the client asked for it, or it ended
    LINGER = "linger"  # a protocol error: shut down writing, drain, then close
    UPGRADE = "upgrade"  # a WebSocket handshake was accepted: the caller takes over


# Module constants: reading an Enum member through its class costs ~200 ns on 3.11.
_KEEP_OPEN: Final = _Outcome.KEEP_OPEN
_CLOSE: Final = _Outcome.CLOSE
_LINGER: Final = _Outcome.LINGER
_UPGRADE: Final = _Outcome.UPGRADE


def _peer_name(sock: socket.socket | trio.socket.SocketType | None) -> str:
    if sock is None:
        return "-"
    try:
        peer = sock.getpeername()
    except OSError:
        return "-"
    if isinstance(peer, tuple):
        return str(peer[0])
    return str(peer) or "-"
