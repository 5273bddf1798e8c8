"""The trio adapter: moves bytes between one stream and the sans-I/O parser and policy.

::

    site = StaticSite.from_settings(config.http)
    await serve_http_connection(stream, site, config.http)   # one connection, to its end
    await serve_http_socket(sock, site, config.http)         # the same on a raw socket
    await refuse_http_connection(stream)                     # worker full: 503 and close

One task per connection, one loop: receive, parse every request the bytes
completed, decide every response, send them in one write, repeat. Pipelined
requests are therefore answered in order with one ``send_all`` for all the small
responses of one receive; a file too large for the cache flushes what is pending
together with its head and goes out with ``os.sendfile`` (see :func:`_send_file`).

Two transports, one loop: :func:`serve_http_connection` drives any trio stream,
:func:`serve_http_socket` a connected non-blocking standard-library socket directly
(what the worker uses). The loop only sees two coroutine functions, ``receive``
and ``send_all`` (the stream's own bound methods, or :class:`_RawSocket`'s), so
the abstraction costs nothing per request. The raw-socket side exists because a
trio ``SocketStream`` pays for generality on every call: a receive is a
cancellation check, a failed ``recv``, a wait and a second ``recv``, then a
scheduler pass (``cancel_shielded_checkpoint``), and a send is another pass. On
a raw socket a keep-alive request is one wait for readability (the only
scheduler pass, and the only checkpoint: timeouts and fairness hang on it), one
``recv`` and one ``send``; a receive waits before it reads, because after an
answer the next request is never there yet.

Time limits are one cancel scope whose deadline moves (no timer tasks):

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

The deadline is moved lazily, because moving a trio deadline costs as much as
parsing a request (see ``_Connection.serve``).

Failures: a policy exception is our bug: logged on ``trioserver.http`` with its
traceback, answered 500, and the connection closes; any other exception from the
adapter is logged and closes the connection. A raw socket's OSErrors (reset,
broken pipe) become ``trio.BrokenResourceError``, as a stream's would. Nothing
but ``Cancelled`` leaves :func:`serve_http_connection` or :func:`serve_http_socket`,
so a bad request never takes the worker down.
A connection closed after a protocol error first shuts its sending side and reads
what the client still sends for a moment ("lingering close"), so the client sees
the error instead of a reset.
"""

from __future__ import annotations

import collections
import enum
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import attrs
import trio

from .files import FileRange
from .parser import HttpConnection, Rejected, Request
from .policy import Response, StaticSite, service_unavailable

if TYPE_CHECKING:
    from trioserver.config import HttpSettings

__all__ = [
    "HttpConnectionState",
    "refuse_http_connection",
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

_MSG_MORE: Final = getattr(socket, "MSG_MORE", 0)


class _FileShrank(Exception):
    """A file got shorter while it was being sent: the promised length cannot be kept."""


@attrs.define(eq=False)
class HttpConnectionState:
    """What the worker sees of one HTTP connection, and how it asks it to finish.

    ``sending`` is True while responses are being written; a draining worker
    cancels a connection that is not sending (idle keep-alive, or mid-request
    head) and sets ``draining`` on the others, which then close after the
    responses in hand. ``by_status`` counts responses by status code.
    """

    sending: bool = False
    draining: bool = False
    by_status: collections.Counter[int] | None = None
    #: The connection's current deadline scope (the adapter's own: one per connection).
    scope: trio.CancelScope | None = None

    def stop(self) -> None:
        """Finish: at once if idle or mid-head, after the answers in hand if sending."""
        self.draining = True
        if not self.sending and self.scope is not None:
            self.scope.cancel()


async def serve_http_connection(
    stream: trio.abc.Stream,
    app: StaticSite,
    settings: HttpSettings,
    state: HttpConnectionState | None = None,
) -> None:
    """Serve HTTP/1.1 requests on ``stream`` until the connection ends; then close it.

    Returns normally on every peer behaviour and on our own bugs (logged); only
    cancellation propagates. The stream is closed when this returns.
    """
    connection = _Connection(
        stream.receive_some,
        stream.send_all,
        stream.send_eof if isinstance(stream, trio.abc.HalfCloseableStream) else None,
        stream.socket if isinstance(stream, trio.SocketStream) else None,
        app,
        settings,
        state or HttpConnectionState(),
    )
    try:
        await _run(connection)
    finally:
        if type(stream) is trio.SocketStream:
            await stream.aclose()  # closes at once; skips aclose_forcefully's cancel scope
        else:
            await trio.aclose_forcefully(stream)


async def serve_http_socket(
    sock: socket.socket,
    app: StaticSite,
    settings: HttpSettings,
    state: HttpConnectionState | None = None,
) -> None:
    """:func:`serve_http_connection` on a connected, non-blocking standard socket.

    The socket belongs to this call from now on: it is closed when this returns
    (after ``trio.lowlevel.notify_closing``). Same behaviour, same guarantees.
    """
    io = _RawSocket(sock)
    connection = _Connection(
        io.receive, io.send_all, io.send_eof, sock, app, settings, state or HttpConnectionState()
    )
    try:
        await _run(connection)
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()


async def _run(connection: _Connection) -> None:
    """Serve one connection; only cancellation leaves (the caller closes the transport)."""
    try:
        await connection.serve()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the peer went away
    except _FileShrank as exc:
        log.warning("closing an HTTP connection: %s", exc)
    except Exception:
        log.exception("HTTP connection failed; closing it")


async def refuse_http_connection(stream: trio.abc.Stream) -> None:
    """Answer 503 (worker full) without reading the request, then close the stream."""
    try:
        with trio.move_on_after(FAREWELL_TIMEOUT):
            await stream.send_all(service_unavailable(time.time()))
            await _linger(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _linger(stream: trio.abc.Stream) -> None:
    """Shut our sending side, then read and drop what the client still sends, briefly."""
    send_eof = stream.send_eof if isinstance(stream, trio.abc.HalfCloseableStream) else None
    await _linger_on(stream.receive_some, send_eof)


async def _linger_on(receive: _Receive, send_eof: _SendEof | None) -> None:
    if send_eof is not None:
        await send_eof()
    drained = 0
    with trio.move_on_after(FAREWELL_TIMEOUT):
        while drained < LINGER_BYTES:
            data = await receive(RECEIVE_SIZE)
            if not data:
                return
            drained += len(data)


_Receive = Callable[[int], Awaitable[bytes | bytearray]]
_SendAll = Callable[[bytes], Awaitable[None]]
_SendEof = Callable[[], Awaitable[None]]


class _RawSocket:
    """``receive`` / ``send_all`` / ``send_eof`` on a non-blocking standard socket.

    ``receive`` is always a checkpoint (timeouts and fairness hang on it). It
    either yields to the scheduler once and then reads ("eager"), or waits for
    readability and then reads. Eager is right under load: by the time every
    other connection has had its turn, the client has sent its next request, and
    a plain yield costs less than a wait (``epoll_ctl``, then the event's round
    trip through ``epoll_wait``). Waiting is right when the connection is quiet.
    So it reads eagerly after every receive that found data that way or after a
    wait, and waits right away after an eager read that found nothing.
    ``send_all`` writes at once and waits only when the socket's buffer is full;
    it is a checkpoint only then. OSErrors become ``trio.BrokenResourceError``.
    """

    __slots__ = ("eager", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.eager = True

    async def receive(self, size: int) -> bytes:
        sock = self.sock
        if self.eager:
            await trio.lowlevel.checkpoint()
            data = _recv(sock, size)
            if data is not None:
                return data
            self.eager = False
        else:
            self.eager = True
        wait_readable = trio.lowlevel.wait_readable
        while True:
            await wait_readable(sock)
            data = _recv(sock, size)
            if data is not None:
                return data

    async def send_all(self, data: bytes) -> None:
        await _send_raw(self.sock, data, 0)

    async def send_eof(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise trio.BrokenResourceError(f"peer went away: {exc}") from exc


def _recv(sock: socket.socket, size: int) -> bytes | None:
    """``sock.recv``, None when nothing is there (a spurious wake-up).

    A function of its own so that a would-block exception's traceback pins this
    short-lived frame, not the connection's (see ``trioserver.worker._recv``).
    """
    try:
        return sock.recv(size)
    except BlockingIOError:
        return None
    except OSError as exc:
        raise trio.BrokenResourceError(f"peer went away: {exc}") from exc


async def _send_raw(sock: socket.socket, data: bytes | memoryview, flags: int) -> None:
    """Send all of ``data``, waiting for room only when the socket's buffer is full.

    A coroutine of its own, so a would-block exception pins this short frame only.
    """
    while True:
        try:
            sent = sock.send(data, flags)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise trio.BrokenResourceError(f"peer went away: {exc}") from exc
        if sent == len(data):
            return
        data = memoryview(data)[sent:]
        await trio.lowlevel.wait_writable(sock)


class _Connection:
    """One connection: its loop, its parser and its lazily moved deadline.

    ``receive``, ``send_all`` and ``send_eof`` (None: cannot half-close) are the
    transport; ``sock`` is its socket (standard or trio) when files may go by
    ``os.sendfile``, else None.
    """

    def __init__(
        self,
        receive: _Receive,
        send_all: _SendAll,
        send_eof: _SendEof | None,
        sock: socket.socket | trio.socket.SocketType | None,
        site: StaticSite,
        settings: HttpSettings,
        state: HttpConnectionState,
    ) -> None:
        self.state = state
        self.receive = receive
        self.send_all = send_all
        self.send_eof = send_eof
        self.sock = sock
        self.site = site
        self.settings = settings
        self.parser = HttpConnection(
            max_request_line=settings.max_request_line,
            max_header_size=settings.max_header_size,
            max_body_size=settings.max_body_size,
        )
        self.peer = _peer_name(sock) if settings.access_log else "-"
        #: When the current wait really ends (header or idle deadline). The scope's
        #: deadline is never later than this while reading (see :meth:`serve`).
        self.deadline = 0.0
        self.scope = trio.CancelScope()
        #: The number of the request whose header clock is running.
        self.head_started = 1
        self.outcome = _Outcome.CLOSE

    async def serve(self) -> None:
        """Run the loop under a cancel scope; re-arm it when it fired early.

        Moving a trio deadline costs about as much as parsing a request, so the
        scope is moved lazily: before answering, only when less than half the
        keep-alive timeout is left; while waiting, only when the real deadline is
        earlier than the scope's. The scope may therefore fire before the real
        deadline; a receive cancelled that way loses no bytes, so a new scope is
        entered with the real deadline and the loop goes on. Timeouts stay exact.
        """
        parser = self.parser
        self.deadline = trio.current_time() + self.settings.header_timeout
        while True:
            with trio.CancelScope(deadline=self.deadline) as scope:
                self.scope = self.state.scope = scope
                await self._loop()
            if not scope.cancelled_caught:
                break
            if self.state.sending:
                return  # the client stopped reading: nothing more can be said
            if self.state.draining:
                return  # the worker is stopping (HttpConnectionState.stop)
            if trio.current_time() < self.deadline:
                continue  # fired early; re-arm
            if parser.in_request:
                timeout = self.site.error(408)
                assert isinstance(timeout.body, bytes)
                with trio.move_on_after(FAREWELL_TIMEOUT):
                    await self.send_all(timeout.head + timeout.body)
                    # The client is still sending its head: closing on unread bytes
                    # would reset the connection and could destroy the 408.
                    await _linger_on(self.receive, self.send_eof)
            return  # an idle connection closes without a word
        if self.outcome is _Outcome.LINGER:
            with trio.move_on_after(FAREWELL_TIMEOUT):
                await _linger_on(self.receive, self.send_eof)

    async def _loop(self) -> None:
        """Receive, parse, answer everything the bytes completed, in one write; repeat."""
        parser = self.parser
        site = self.site
        scope = self.scope
        receive_some = self.receive
        send_all = self.send_all
        receive_events = parser.receive_events
        respond = site.respond
        now = trio.lowlevel.current_clock().current_time
        access = self.settings.access_log
        idle = self.settings.keep_alive_timeout
        half_idle = idle / 2
        header_timeout = self.settings.header_timeout
        keep_open, close, linger = _KEEP_OPEN, _CLOSE, _LINGER
        state = self.state
        by_status = state.by_status
        # Our copy of scope.deadline: reading the property costs more than comparing.
        scope_deadline = scope.deadline
        while True:
            events = receive_events(await receive_some(RECEIVE_SIZE))
            if events:
                arrived = now()
                if scope_deadline < arrived + half_idle:
                    scope_deadline = scope.deadline = arrived + idle
                state.sending = True
                out: list[bytes] = []
                size = 0
                outcome = keep_open
                for event in events:
                    if type(event) is Request:
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
                            scope_deadline = scope.deadline  # moved while sending
                        if by_status is not None:
                            by_status[response.status] += 1
                        if access:
                            self._log_access(event, response)
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
                    await send_all(b"".join(out))
                state.sending = False
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
            if scope_deadline > self.deadline:
                scope_deadline = scope.deadline = self.deadline

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
        self.scope.deadline = trio.current_time() + self.settings.send_timeout
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

        The raw socket calls raise plain OSErrors when the peer goes away; they are
        turned into BrokenResourceError like every other stream error.
        """
        try:
            scope = self.scope
            send_timeout = self.settings.send_timeout
            if isinstance(sock, socket.socket):
                await _send_raw(sock, head, _MSG_MORE)
            else:
                view = memoryview(head)
                while view:
                    sent = await sock.send(view, _MSG_MORE)
                    view = view[sent:]
            out = sock.fileno()
            since_checkpoint = 0
            while length:
                try:
                    sent = os.sendfile(out, fd, offset, min(length, SENDFILE_CHUNK))
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
                    continue
                if sent == 0:
                    raise _FileShrank(f"file shrank by {length} bytes while being sent")
                offset += sent
                length -= sent
                scope.deadline = trio.current_time() + send_timeout
                since_checkpoint += sent
                if since_checkpoint >= SENDFILE_CHUNK:
                    since_checkpoint = 0
                    await trio.lowlevel.checkpoint()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
            raise trio.BrokenResourceError(f"peer went away: {exc}") from exc

    async def _copy(self, fd: int, offset: int, length: int) -> None:
        """Send a file range over a stream that is not a socket: read in a thread, send."""
        scope = self.scope
        send_timeout = self.settings.send_timeout
        while length:
            chunk = await trio.to_thread.run_sync(os.pread, fd, min(length, COPY_CHUNK), offset)
            if not chunk:
                raise _FileShrank(f"file shrank by {length} bytes while being sent")
            await self.send_all(chunk)
            offset += len(chunk)
            length -= len(chunk)
            scope.deadline = trio.current_time() + send_timeout

    def _log_access(self, request: Request, response: Response) -> None:
        access_log.info(
            '%s "%s %s HTTP/%s" %d %d',
            self.peer,
            request.method.decode("ascii", "replace"),
            request.target.decode("latin-1"),
            request.version.decode("ascii"),
            response.status,
            response.body_length,
        )


class _Outcome(enum.Enum):
    """What a batch of responses leaves the connection to do."""

    KEEP_OPEN = "keep open"
    CLOSE = "close"  # the client asked for it, or it ended
    LINGER = "linger"  # a protocol error: shut down writing, drain, then close


# Module constants: reading an Enum member through its class costs ~200 ns on 3.11.
_KEEP_OPEN: Final = _Outcome.KEEP_OPEN
_CLOSE: Final = _Outcome.CLOSE
_LINGER: Final = _Outcome.LINGER


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
