"""WebSocket as a transport: the binary protocol's byte stream in binary messages.

::

    ws = WebSocketTransport(http_transport, trailing_bytes, max_message=262144)
    conn = Connection(slot, ws, peer, shared)      # the same reader, rules and hub
    await conn.serve(proxy_header=False)

Made by the worker once the HTTP adapter has answered a good handshake (see
:mod:`trioserver.http.websocket`), on top of that connection's own transport (a
socket, or TLS on the HTTPS port). To the connection it is a byte stream like
any other: ``receive_nowait`` returns the payload bytes of binary messages as they
arrive (a packet may span messages, a message may hold several packets: message
boundaries mean nothing), and every send goes out as one binary message.

The peer's frames: what browsers send, one final masked binary frame of up to
64 KiB per message, is unmasked here once the whole frame is in (a few bytewise
checks and one XOR; wsproto's general parser costs about four times what the rest
of a ping's handling does). From the first frame that is anything else (a control
frame, a fragment, text, no mask, reserved bits, a longer frame) wsproto parses
every byte of the connection: masking enforced, fragmentation, control frames,
close codes, UTF-8 of close reasons, frames of any length streamed as they
arrive. What it finds wrong, and what the binary protocol cannot carry, ends the
connection with a close frame and a counted kick
(:class:`~trioserver.transport.PeerProtocolError`):

==============================================  ==========  ==========================
the peer sent                                   close code  kick
==============================================  ==========  ==========================
a bad frame (reserved bits, bad opcode, an      1002        ``websocket``
unmasked frame, a bad continuation, a control
frame over 125 bytes or fragmented)
a bad close frame or invalid UTF-8              1002, 1007  ``websocket``
a text message                                  1003        ``websocket``
a message over ``http.websocket_max_message``   1009        ``websocket_too_big``
==============================================  ==========  ==========================

Packets that arrived before the fault are answered first, as after a bad packet
header on TCP. A ping is answered with a pong at once; a pong is ignored (the
heartbeat is the binary protocol's ping, code 0, as on TCP).

Closing says why, as a close code (the connection tells the transport with
``closing`` first): 1000 after the peer's own close or a clean end, 1001 when the
worker drains, 1011 after a handler bug, 1008 for any other kick (heartbeat,
flood, send caps, ...), with the kick's name as the reason text. A finished
connection lingers by the close handshake: ``send_eof`` sends the close frame and
the reader then reads (and drops) until the peer's close answers it; a kick sends
its close frame (waiting at most ``CLOSE_TIMEOUT`` for room) and closes. The peer's own close
reads as EOF, as a half-close does on TCP: the packets that came before it are
answered, then its close code is echoed and the connection closes (RFC 6455 §5.5.1
lets a close wait for the message in progress).

Sending frames outgoing binary messages here (a server's frames are unmasked: a
2-10 byte header before the bytes), because the seam's ``send_nowait`` must say
how many of the caller's bytes were taken: when the socket takes only part of a
frame, the frame's header already promised the rest, and the next send (the
outbox's writer, with the bytes not taken, as every caller of the seam does)
continues that frame before it starts another. Control frames (pong, close) wait
for such a frame to end; one that the socket cannot take at once goes out with
the next send.

A reload can move the connection to another worker while it is on the fast path
in a clean state (no wsproto parser made, no frame half sent, no control frame
waiting, no close begun): what moves is the payload not yet handed out and the
raw bytes of a frame still arriving (``handoff_frames``); in any other state
``handoff_socket`` says None and the connection drains instead.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Final

import trio
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong

from .reasons import CloseReason, KickReason
from .transport import (
    LINGER_TIMEOUT,
    PeerProtocolError,
    SendInterrupted,
    StdSocket,
    Transport,
    movable,
)

__all__ = ["CLOSE_CODES", "WebSocketTransport", "frame_header"]

#: Close code for why a connection ends (RFC 6455 §7.4.1); any other kick is 1008.
CLOSE_CODES: Final[dict[KickReason | CloseReason | None, int]] = {
    None: 1000,
    CloseReason.DRAINED: 1001,
    KickReason.DRAIN_TIMEOUT: 1001,
    KickReason.HANDLER_ERROR: 1011,
}
_POLICY_VIOLATION: Final = 1008
#: Most seconds a closing connection waits for its close frame to leave (a peer that
#: does not read cannot hold the slot longer).
CLOSE_TIMEOUT: Final = 1.0

_OPEN: Final = ConnectionState.OPEN
_REMOTE_CLOSING: Final = ConnectionState.REMOTE_CLOSING

#: A final binary frame's header for each payload length below 126 (the common case).
_SMALL_HEADERS: Final = tuple(bytes((0x82, n)) for n in range(126))
_MEDIUM: Final = struct.Struct("!BBH")
_LARGE: Final = struct.Struct("!BBQ")


def _unmask(data: bytes, mask: bytes) -> bytes:
    """``data`` XOR the 4-byte ``mask`` repeated (RFC 6455 §5.3), as one big-integer XOR."""
    size = len(data)
    if not size:
        return b""
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


def frame_header(length: int) -> bytes:
    """The header of one final, unmasked binary frame of ``length`` payload bytes."""
    if length < 126:
        return _SMALL_HEADERS[length]
    if length < 65536:
        return _MEDIUM.pack(0x82, 126, length)
    return _LARGE.pack(0x82, 127, length)


class WebSocketTransport:
    """The seam over one accepted WebSocket (see the module docstring)."""

    __slots__ = (
        "_close_code",
        "_close_sent",
        "_control",
        "_eof",
        "_error",
        "_head_tail",
        "_max_message",
        "_message_size",
        "_owed",
        "_parsed",
        "_partial",
        "_payload",
        "_peer_closed",
        "_reason_text",
        "_ws",
        "lingers",
        "lower",
        "subprotocol",
    )

    def __init__(
        self,
        lower: Transport,
        trailing: bytes = b"",
        *,
        max_message: int = 262144,
        subprotocol: str | None = None,
    ) -> None:
        """``lower``: the HTTP connection's transport, after the 101 went out;
        ``trailing``: bytes the client sent right after its handshake."""
        self.lower = lower
        self.subprotocol = subprotocol
        #: A close handshake is the lingering close: always finish with one.
        self.lingers = True
        #: wsproto's side, made on first need (1.7 KiB an idle connection does not pay).
        self._ws: WsConnection | None = None
        self._max_message = max_message
        self._message_size = 0
        #: Once a frame is anything but a final masked binary one of at most 64 KiB,
        #: wsproto parses every byte from there on (see the module docstring).
        self._parsed = False
        #: The start of a frame still arriving (fast path only; at most 64 KiB and a header).
        self._partial = b""
        #: Payload bytes decoded and not yet handed out.
        self._payload: bytes | None = None
        #: The peer's close came (or TCP's EOF): after the payload, ``b""``.
        self._eof = False
        self._peer_closed = False
        #: The fault found in the peer's frames, raised once its earlier payload is out.
        self._error: PeerProtocolError | None = None
        #: Control frames to send once the frame in progress is complete.
        self._control = b""
        #: The unsent part of a frame header, and payload bytes its frame still owes.
        self._head_tail = b""
        self._owed = 0
        self._close_code = 1000
        self._reason_text = ""
        self._close_sent = False
        if trailing:
            self._feed(trailing)

    def _wsproto(self) -> WsConnection:
        ws = self._ws
        if ws is None:
            ws = self._ws = WsConnection(ConnectionType.SERVER)
        return ws

    @property
    def socket(self) -> None:
        """None: every byte is framed, never ``os.sendfile``."""
        return None

    # -- moving to another worker --------------------------------------------------------

    def handoff_socket(self) -> StdSocket | None:
        """The socket under this WebSocket, if its state can move (see the module docstring)."""
        lower = self.lower
        clean = not (
            self._ws is not None
            or self._parsed
            or self._eof
            or self._error is not None
            or self._control
            or self._owed
            or self._head_tail
            or self._close_sent
        )
        below = movable(lower)
        return below.handoff_socket() if clean and below is not None else None

    def handoff_frames(self) -> tuple[bytes, bytes]:
        """Payload decoded but not yet handed out, and the raw start of a frame still
        arriving: what a new worker's WebSocketTransport starts from."""
        return self._payload or b"", self._partial

    def interrupt(self) -> None:
        below = movable(self.lower)
        if below is not None:
            below.interrupt()

    async def forget(self) -> None:
        below = movable(self.lower)
        await (self.lower.aclose() if below is None else below.forget())

    # -- receiving -----------------------------------------------------------------------

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        while True:
            data = self._payload
            if data is not None:
                if len(data) > max_bytes:
                    self._payload = data[max_bytes:]
                    return data[:max_bytes]
                self._payload = None
                return data
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            raw = self.lower.receive_nowait(max_bytes)
            if raw is None:
                return None
            if not raw:
                self._eof = True  # TCP's end without a close frame: an end all the same
                continue
            self._feed(raw)

    async def wait_readable(self) -> None:
        if self._payload is not None or self._error is not None or self._eof:
            await trio.lowlevel.checkpoint()
            return
        await self.lower.wait_readable()

    def _feed(self, raw: bytes) -> None:
        """Take whole final masked binary frames here; hand the rest to wsproto."""
        if self._parsed:
            self._feed_wsproto(raw)
            return
        buf = self._partial + raw if self._partial else raw
        end = len(buf)
        at = 0
        chunks: list[bytes] = []
        slow = False
        max_message = self._max_message
        while end - at >= 2:
            if buf[at] != 0x82 or buf[at + 1] < 0x80:
                slow = True  # not a final masked binary frame: wsproto judges it
                break
            length = buf[at + 1] & 0x7F
            head = 6
            if length == 126:
                if end - at < 4:
                    break
                length = (buf[at + 2] << 8) | buf[at + 3]
                head = 8
                if length < 126:
                    slow = True  # not the shortest length encoding: wsproto refuses it
                    break
            elif length == 127:
                slow = True  # over 64 KiB: wsproto streams it
                break
            if length > max_message:
                self._partial = b""
                self._fail(
                    1009, KickReason.WEBSOCKET_TOO_BIG, f"a message over {max_message} bytes"
                )
                break
            stop = at + head + length
            if stop > end:
                break  # the rest of this frame is still on its way
            chunks.append(_unmask(buf[at + head : stop], buf[at + head - 4 : at + head]))
            at = stop
        if chunks:
            payload = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._payload = payload if self._payload is None else self._payload + payload
        if self._error is not None:
            return
        rest = buf[at:] if at else buf
        if slow:
            self._parsed = True
            self._partial = b""
            self._feed_wsproto(rest)
        else:
            self._partial = rest

    def _feed_wsproto(self, raw: bytes) -> None:
        """Parse ``raw`` with wsproto: payload to hand out, pings to answer, a close or a fault."""
        ws = self._wsproto()
        ws.receive_data(raw)
        chunks: list[bytes] = []
        for event in ws.events():
            kind = type(event)
            if kind is BytesMessage:
                assert isinstance(event, BytesMessage)
                data = event.data
                size = self._message_size + len(data)
                if size > self._max_message:
                    self._fail(
                        1009,
                        KickReason.WEBSOCKET_TOO_BIG,
                        f"a message over {self._max_message} bytes",
                    )
                    break
                self._message_size = 0 if event.message_finished else size
                if data:
                    chunks.append(bytes(data))
            elif kind is Ping:
                assert isinstance(event, Ping)
                if ws.state is _OPEN:
                    self._send_control(ws.send(event.response()))
            elif kind is Pong:
                pass
            elif kind is CloseConnection:
                assert isinstance(event, CloseConnection)
                if ws.state is _OPEN:  # wsproto reports a bad frame as a close it makes
                    self._fail(event.code, KickReason.WEBSOCKET, event.reason or "a bad frame")
                    break
                if ws.state is _REMOTE_CLOSING:  # the peer's: echoed once it is answered
                    self._close_code = event.code
                self._peer_closed = self._eof = True
                break
            else:  # a text message: the binary protocol has no text
                self._fail(1003, KickReason.WEBSOCKET, "a text message")
                break
        if chunks:
            payload = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._payload = payload if self._payload is None else self._payload + payload

    def _fail(self, code: int, reason: KickReason, detail: str) -> None:
        """Remember the fault; the close frame that names it goes out with ``send_eof``
        (after the replies to what came before) or ``aclose``."""
        self._error = PeerProtocolError(reason, f"WebSocket {code}: {detail}")
        self._close_code = code
        self._reason_text = reason.value

    # -- sending -------------------------------------------------------------------------

    def send_nowait(self, data: bytes | memoryview) -> int:
        if self._close_sent:
            return len(data)  # our close went out: the peer reads nothing more (§1.4)
        lower = self.lower
        taken = 0
        owed = self._owed
        if owed or self._head_tail:  # finish the frame in progress first
            head = self._head_tail
            part = head + data[:owed] if head else data[:owed]
            sent = lower.send_nowait(part)
            if sent < len(head):
                self._head_tail = head[sent:]
                return 0
            self._head_tail = b""
            taken = sent - len(head)
            self._owed = owed - taken
            if self._owed:
                return taken
            data = data[taken:]
        if self._control and not self._flush_control():
            return taken
        if not data:
            return taken
        header = frame_header(len(data))
        sent = lower.send_nowait(header + data)
        if sent < len(header):
            if sent:
                self._head_tail = header[sent:]
                self._owed = len(data)
            return taken
        payload = sent - len(header)
        self._owed = len(data) - payload
        return taken + payload

    def _flush_control(self) -> bool:
        """Send the waiting control frames; True once none is left."""
        control = self._control
        sent = self.lower.send_nowait(control)
        self._control = control[sent:]
        return not self._control

    def _send_control(self, frame: bytes) -> None:
        """Send a control frame now if nothing is in progress, else after it."""
        self._control += frame
        if not (self._owed or self._head_tail):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                self._flush_control()  # if it failed, the reader meets it on its next receive

    def _send_close(self) -> None:
        ws = self._wsproto()
        if ws.state is _OPEN or ws.state is _REMOTE_CLOSING:
            frame = ws.send(CloseConnection(self._close_code, self._reason_text or None))
            self._send_control(frame)
        self._close_sent = True

    async def wait_writable(self) -> None:
        await self.lower.wait_writable()

    async def send_all(self, data: bytes | memoryview, *, more: bool = False) -> None:
        view = memoryview(data)
        while True:
            view = view[self.send_nowait(view) :]
            done = not view and not self._owed and not self._head_tail
            if done and (not self._control or self._flush_control()):
                return
            try:
                await self.lower.wait_writable()
            except trio.ClosedResourceError:
                raise SendInterrupted(bytes(view)) from None

    async def send_eof(self) -> None:
        """Send the close frame; the peer's close then reads as EOF (the linger waits)."""
        if self._owed or self._head_tail:
            return  # a frame was left half sent: no close frame can follow it
        if not self._close_sent:
            self._send_close()
        with trio.move_on_after(LINGER_TIMEOUT):  # a peer that does not read cannot stall it
            while self._control:
                await self.lower.wait_writable()
                if self._flush_control():
                    break

    # -- closing -------------------------------------------------------------------------

    def closing(self, reason: KickReason | CloseReason | None) -> None:
        """Pick the close code for ``reason`` (a fault found in the frames keeps its own)."""
        if self._error is None and not self._peer_closed:
            self._close_code = CLOSE_CODES.get(reason, _POLICY_VIOLATION)
            self._reason_text = reason.value if isinstance(reason, KickReason) else ""

    async def aclose(self) -> None:
        """Send the close frame (within ``CLOSE_TIMEOUT``, whatever cancels the caller),
        then close the transport under it."""
        in_frame = self._owed or self._head_tail  # a half-sent frame: no close can follow
        if not self._close_sent and not in_frame:
            ws = self._wsproto()
            if ws.state is _OPEN or ws.state is _REMOTE_CLOSING:
                self._control += ws.send(
                    CloseConnection(self._close_code, self._reason_text or None)
                )
            self._close_sent = True
        if self._control and not in_frame:
            # Through send_all: a TLS transport under this one only queues what send_nowait
            # takes, and would drop it on close.
            deadline = trio.current_time() + CLOSE_TIMEOUT
            with (
                trio.CancelScope(shield=True, deadline=deadline),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                await self.lower.send_all(self._control)
            self._control = b""
        await self.lower.aclose()
