"""The transport seam: how a connection moves bytes, whatever carries them.

A connection (binary or HTTP) reads and writes through one small interface,
:class:`Transport`, shaped for a reader that tries before it waits::

    data = transport.receive_nowait(65536)   # bytes, b"" at EOF, None: nothing there yet
    if data is None:
        await transport.wait_readable()      # the only wait; then try again
    sent = transport.send_nowait(reply)      # what fit now; the rest waits for...
    await transport.send_all(rest)           # ...a writer that waits for room

Implementations:

- :class:`SocketTransport`: a connected non-blocking standard socket, the
  production fast path. ``receive_nowait`` is one ``recv``, ``wait_readable``
  is trio's own ``wait_readable`` (the only scheduler pass per wake-up), and a
  reply that fits goes out in one ``send`` without a task switch.
- :class:`StreamTransport`: any ``trio.abc.Stream`` (``trio.SSLStream``,
  ``trio.SocketStream``, trio's memory streams). A stream cannot be read without
  waiting, so ``wait_readable`` receives into a one-chunk buffer that
  ``receive_nowait`` then hands out; a stream with ``send_nowait`` (the testing
  kit's links) is written without a task.
- Anything else that has these methods: the testing kit's simulated links are
  transports themselves, so the kit runs exactly the production reader.

Semantics shared by all: ``receive_nowait`` and ``send_nowait`` never wait and
are not checkpoints; a reset peer raises ``trio.BrokenResourceError`` (from any
method), a transport we closed ``trio.ClosedResourceError``; ``aclose`` closes
at once and never raises. One receiver and one sender may work concurrently,
as on a trio stream. A transport with framing of its own (WebSocket) raises
:class:`PeerProtocolError`, a ``BrokenResourceError`` that names the kick, when
the peer breaks that framing; before closing, a connection tells its transport
why (``closing``), so such a transport can say it to the peer (a close code).
After a send that took only part of the bytes, the caller goes on with the rest
(as the outbox does), so a transport may have framed them already.

A transport whose connection can move to another process on a reload
(:class:`Movable`: a plain socket, a WebSocket on one) can wake the tasks
waiting on its socket without closing it (``interrupt``: a waiting ``send_all``
then raises :class:`SendInterrupted`, which says exactly which bytes did not go
out) and close its own copy without a word to the peer (``forget``).
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Awaitable
from typing import Any, Final, Protocol, TypeAlias, cast

import trio

from .parking import ReadParking
from .peer import Peer
from .reasons import CloseReason, KickReason

__all__ = [
    "LINGER_BYTES",
    "LINGER_TIMEOUT",
    "Movable",
    "PeerProtocolError",
    "SendInterrupted",
    "SocketTransport",
    "StreamTransport",
    "Transport",
    "as_transport",
    "linger",
    "movable",
    "peer_of_stream",
]

#: How long a finished connection keeps reading (and discarding) after its last
#: reply, so the peer gets every reply instead of a reset (nginx's lingering close).
LINGER_TIMEOUT: Final = 2.0
LINGER_BYTES: Final = 1 << 20
#: A reader that waits again within this many seconds of its previous wait is busy:
#: it waits in trio's own ``wait_readable`` rather than in the worker's parking.
#: Pings back to back (a round trip of well under a millisecond) stay on trio's
#: path; a connection quiet for longer (an idle client, a heartbeat every few
#: seconds) parks. It is an upper bound on the memory-for-latency trade: a busy
#: connection that then falls quiet waits once more in trio's wait first.
BUSY_WAIT: Final = 0.01
_LONG_AGO: Final = -math.inf
_monotonic = time.monotonic
#: Most bytes a :class:`StreamTransport` asks its stream for in one receive.
STREAM_RECEIVE_SIZE: Final = 65536

_MSG_MORE: Final = getattr(socket, "MSG_MORE", 0)


class PeerProtocolError(trio.BrokenResourceError):
    """The peer broke the transport's own framing (a bad WebSocket frame): kick it.

    The transport has already told the peer (a WebSocket close code); ``reason`` is
    the kick counted, ``str(exc)`` what exactly was wrong.
    """

    def __init__(self, reason: KickReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


#: The standard socket type (``socket`` is a property name in the classes below).
StdSocket: TypeAlias = socket.socket


class SendInterrupted(trio.ClosedResourceError):
    """A ``send_all`` waiting for room was woken by ``notify_closing`` (a close, or a
    handoff's ``interrupt``); ``unsent`` is what of its bytes did not go out."""

    def __init__(self, unsent: bytes) -> None:
        super().__init__("the send was interrupted")
        self.unsent = unsent


class Transport(Protocol):
    """The bytes under one connection (see the module docstring for the semantics)."""

    #: True when closing with unread bytes destroys replies still in flight (TCP
    #: answers them with a reset), so a finished connection lingers before closing.
    lingers: bool

    @property
    def socket(self) -> socket.socket | trio.socket.SocketType | None:
        """The socket under the transport, when bytes may go by ``os.sendfile``."""
        ...

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        """Up to ``max_bytes`` that are there now; ``b""`` at EOF; None when none are."""
        ...

    def wait_readable(self) -> Awaitable[None]:
        """Wait until ``receive_nowait`` has something to say (bytes, EOF or an error)."""
        ...

    def send_nowait(self, data: bytes | memoryview) -> int:
        """Send what fits now; how many bytes were taken (0 when none fit)."""
        ...

    def wait_writable(self) -> Awaitable[None]:
        """Wait until a send might take something."""
        ...

    async def send_all(self, data: bytes | memoryview, *, more: bool = False) -> None:
        """Send all of ``data``, waiting for room as needed; ``more``: more follows at once."""
        ...

    async def send_eof(self) -> None:
        """Close our sending side (the peer reads EOF after what was sent); may be a no-op."""
        ...

    def closing(self, reason: KickReason | CloseReason | None) -> None:
        """Why the connection is about to end (before ``send_eof`` or ``aclose``); a
        byte stream has no way to say it and ignores it."""
        ...

    async def aclose(self) -> None:
        """Close now, discarding anything unsent; never raises."""
        ...


class Movable(Protocol):
    """A transport whose connection a reload can hand to another process."""

    def handoff_socket(self) -> StdSocket | None:
        """The socket to move, or None while the transport holds state that cannot."""
        ...

    def interrupt(self) -> None:
        """Wake the tasks waiting on the socket (they see ``ClosedResourceError``) and
        drop it from trio's I/O registrations; the socket stays open."""
        ...

    async def forget(self) -> None:
        """Close this process's copy of the socket, sending nothing (it has moved)."""
        ...


def movable(transport: object) -> Movable | None:
    """``transport`` as a :class:`Movable`, or None if it is not one (a method check:
    ``isinstance`` on a runtime protocol costs tens of microseconds)."""
    return cast(Movable, transport) if hasattr(transport, "handoff_socket") else None


class SocketTransport:
    """A connected, non-blocking standard socket (the worker's fast path).

    With ``parking`` (the worker's :class:`~trioserver.parking.ReadParking`) a
    quiet reader waits there instead of in trio's ``wait_readable``: far less
    memory per idle connection. A busy one, back within :data:`BUSY_WAIT` of its
    previous wait, keeps trio's wait, which wakes it one scheduler pass sooner.
    """

    __slots__ = ("parking", "sock", "waited_at")

    lingers = True

    def __init__(self, sock: socket.socket, parking: ReadParking | None = None) -> None:
        self.sock = sock
        self.parking = parking
        #: When the reader last asked to wait (``time.monotonic``).
        self.waited_at = _LONG_AGO

    @property
    def socket(self) -> socket.socket:
        return self.sock

    # Each call that can raise BlockingIOError is a method of its own: the
    # exception's traceback then pins this short-lived frame, not the caller's
    # (Python makes a full frame object for a frame an exception passes through:
    # about 400 bytes for each idle connection's reader otherwise).

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        try:
            return self.sock.recv(max_bytes)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _failed(self.sock, exc) from exc

    def wait_readable(self) -> Awaitable[None]:
        # A plain function returning trio's coroutine: no frame of ours while parked.
        parking = self.parking
        if parking is not None:
            now = _monotonic()
            quiet = now - self.waited_at >= BUSY_WAIT
            self.waited_at = now
            if quiet:
                return parking.wait_readable(self.sock)
        return trio.lowlevel.wait_readable(self.sock)  # noqa: ASYNC105 (the caller awaits)

    def send_nowait(self, data: bytes | memoryview) -> int:
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise _failed(self.sock, exc) from exc

    def wait_writable(self) -> Awaitable[None]:
        return trio.lowlevel.wait_writable(self.sock)  # noqa: ASYNC105 (the caller awaits)

    async def send_all(self, data: bytes | memoryview, *, more: bool = False) -> None:
        sock = self.sock
        flags = _MSG_MORE if more else 0
        while True:
            try:
                sent = sock.send(data, flags)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise _failed(sock, exc) from exc
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
            try:
                await trio.lowlevel.wait_writable(sock)
            except trio.ClosedResourceError:
                raise SendInterrupted(bytes(data)) from None

    async def send_eof(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise _failed(self.sock, exc) from exc

    def closing(self, reason: KickReason | CloseReason | None) -> None:
        pass

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Close at once (the socket's waiters are woken with ``ClosedResourceError``)."""
        if self.parking is not None:
            self.parking.notify_closing(self.sock)
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()

    def handoff_socket(self) -> StdSocket:
        return self.sock

    def interrupt(self) -> None:
        if self.parking is not None:
            self.parking.forget(self.sock)
        trio.lowlevel.notify_closing(self.sock)

    async def forget(self) -> None:
        # Closing one of the socket's descriptors sends nothing while another process
        # holds one: only the last close ends the TCP connection.
        self.close()


def _failed(
    sock: socket.socket, exc: OSError
) -> trio.BrokenResourceError | trio.ClosedResourceError:
    """The seam's error for a failed socket call: ours if we closed it, else the peer's."""
    if sock.fileno() == -1:
        return trio.ClosedResourceError("this transport was closed")
    return trio.BrokenResourceError(f"peer went away: {exc}")


class StreamTransport:
    """Any ``trio.abc.Stream`` as a transport (see the module docstring)."""

    __slots__ = ("_pending", "_send_nowait", "lingers", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._pending: bytes | None = None
        self._send_nowait = getattr(stream, "send_nowait", None)
        self.lingers = _over_tcp(stream)

    @property
    def socket(self) -> trio.socket.SocketType | None:
        stream = self.stream
        return stream.socket if isinstance(stream, trio.SocketStream) else None

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        data = self._pending
        if data is None:
            return None
        if len(data) > max_bytes:
            self._pending = data[max_bytes:]
            return data[:max_bytes]
        self._pending = None
        return data

    async def wait_readable(self) -> None:
        if self._pending is None:
            self._pending = bytes(await self.stream.receive_some(STREAM_RECEIVE_SIZE))
        else:
            await trio.lowlevel.checkpoint()

    def send_nowait(self, data: bytes | memoryview) -> int:
        send_nowait = self._send_nowait
        return 0 if send_nowait is None else int(send_nowait(data))

    async def wait_writable(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_all(self, data: bytes | memoryview, *, more: bool = False) -> None:
        await self.stream.send_all(data)

    async def send_eof(self) -> None:
        stream = self.stream
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        else:
            await trio.lowlevel.checkpoint()

    def closing(self, reason: KickReason | CloseReason | None) -> None:
        pass

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)


def _over_tcp(stream: trio.abc.Stream) -> bool:
    """True when a TCP socket is at the bottom of ``stream`` (through SSLStream layers)."""
    inner: Any = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    return isinstance(inner, trio.SocketStream)


def as_transport(connection: socket.socket | trio.abc.Stream) -> Transport:
    """The transport for an accepted connection: a socket, a stream, or a transport already."""
    if isinstance(connection, socket.socket):
        return SocketTransport(connection)
    if hasattr(connection, "receive_nowait") and hasattr(connection, "wait_readable"):
        return connection  # type: ignore[return-value]  # it implements the seam itself
    return StreamTransport(connection)


def peer_of_stream(stream: Any) -> Peer:
    """The client at the other end of a stream: its socket's address, or its ``peer``."""
    if isinstance(stream, trio.SocketStream):
        try:
            return Peer.from_sockaddr(stream.socket.getpeername())
        except OSError:
            return Peer("unknown")
    peer = getattr(stream, "peer", None)
    if isinstance(peer, Peer):
        return peer
    return Peer.parse(str(peer)) if peer is not None else Peer(type(stream).__name__)


async def linger(
    transport: Transport, seconds: float = LINGER_TIMEOUT, max_bytes: int = LINGER_BYTES
) -> None:
    """Shut our side, then read and drop the peer's bytes until its EOF (bounded).

    Closing a TCP socket whose receive buffer still holds unread bytes makes
    Linux send a reset, which can destroy replies the peer has not read yet: a
    client that pipelined past the point where we stopped reading (a drain, a
    flood rule, an HTTP error) would lose answers it was owed.
    """
    try:
        await transport.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    discarded = 0
    with trio.move_on_after(seconds):
        while discarded < max_bytes:
            try:
                data = transport.receive_nowait(65536)
                if data is None:
                    await transport.wait_readable()
                    continue
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            discarded += len(data)
