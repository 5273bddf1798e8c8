"""Clients for the binary protocol: one for trio code, one blocking.

::

    async with await Client.connect("127.0.0.1", 10000) as client:
        rtt = await client.ping()
        reply = await client.register("alice", "secret")

    with BlockingClient.connect("127.0.0.1", 10000) as client:
        client.ping()

    tls = client_tls_context(cafile="ca.pem")          # server.tls_listen
    async with await Client.connect("example.com", 10443, tls=tls) as client: ...

Both frame with :class:`~trioserver.framer.FrameDecoder`, so a reply split across
reads or several replies in one read are handled alike. ``Client`` wraps any
``trio.abc.Stream``, so tests can drive a worker over in-memory streams.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from types import TracebackType

import trio

from .framer import NEED_DATA, PING, Discarded, FrameDecoder, Packet, encode
from .messages import (
    LoginReply,
    MessageCode,
    RegisterReply,
    decode_login_reply,
    decode_register_reply,
    encode_login,
    encode_register,
    encode_resume,
)

__all__ = [
    "BlockingClient",
    "Client",
    "ConnectionClosed",
    "UnexpectedReply",
    "client_tls_context",
]

#: The largest packet a client accepts from a server (pkgLen is a u16).
_CLIENT_MAX_PACKET = 0xFFFF


def client_tls_context(
    *,
    cafile: str | os.PathLike[str] | None = None,
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A verifying client context: the system's CAs, or ``cafile``'s; a client
    certificate to present when ``certfile`` is given (for ``[tls] client_ca``)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile is not None:
        context.load_cert_chain(certfile, keyfile)
    return context


class ConnectionClosed(ConnectionError):
    """The server closed the connection before the expected reply arrived."""


class UnexpectedReply(ValueError):
    """The server answered with a message code other than the one expected."""


def _check(packet: Packet, code: int) -> Packet:
    if packet.code != code:
        raise UnexpectedReply(f"expected a reply with msgCode {code}, got {packet.code}")
    return packet


def _next_packet(decoder: FrameDecoder) -> Packet | None:
    """The next whole packet buffered, or None when more bytes are needed."""
    event = decoder.next_packet()
    if event is NEED_DATA:
        return None
    if isinstance(event, Discarded):
        raise UnexpectedReply(f"server sent a packet with a bad CRC: {event}")
    return event


def _feed(decoder: FrameDecoder, data: bytes | bytearray) -> None:
    if not data:
        raise ConnectionClosed("the server closed the connection")
    decoder.receive_data(data)


class Client:
    """A trio client over any stream (a TCP connection, or a memory stream in tests)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(_CLIENT_MAX_PACKET)

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Client:
        """Connect over TCP, or over TLS with ``tls`` (verified for ``server_hostname``,
        by default ``host``); the handshake is done when this returns."""
        stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        if tls is not None:
            stream = await _start_tls(stream, tls, server_hostname or host)
        return cls(stream)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (whole packets, fragments, garbage); a closed
        connection raises the stream's own ``trio.BrokenResourceError``."""
        await self.stream.send_all(data)

    async def send(self, code: int, body: bytes = b"") -> None:
        """Send one packet; ``ConnectionClosed`` if the server has closed the connection."""
        await self._send(encode(code, body))

    async def _send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except trio.BrokenResourceError as exc:
            raise ConnectionClosed("the server closed the connection") from exc

    async def receive_packet(self) -> Packet:
        """The next packet from the server; ``ConnectionClosed`` at EOF."""
        while (packet := _next_packet(self._decoder)) is None:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError as exc:
                raise ConnectionClosed("connection reset by the server") from exc
            _feed(self._decoder, data)
        return packet

    async def at_eof(self) -> bool:
        """Read until the server closes; True if it closed cleanly with nothing unread."""
        try:
            packet = await self.receive_packet()
        except ConnectionClosed:
            return True
        raise UnexpectedReply(f"expected EOF, got a packet: {packet}")

    async def request(self, code: int, body: bytes = b"") -> Packet:
        """Send one packet and return the next packet received."""
        await self.send(code, body)
        return await self.receive_packet()

    async def ping(self) -> float:
        """Round trip of one ping, in seconds (of trio's clock)."""
        start = trio.current_time()
        await self._send(PING)
        _check(await self.receive_packet(), MessageCode.PING)
        return trio.current_time() - start

    async def register(
        self, username: str | bytes, password: str | bytes, itype: int = 1
    ) -> RegisterReply:
        await self._send(encode_register(username, password, itype))
        return decode_register_reply(_check(await self.receive_packet(), MessageCode.REGISTER).body)

    async def login(self, username: str | bytes, password: str | bytes) -> LoginReply:
        await self._send(encode_login(username, password))
        return decode_login_reply(_check(await self.receive_packet(), MessageCode.LOGIN).body)

    async def resume(self, username: str | bytes, token: bytes) -> LoginReply:
        """Log in with the session token of an earlier login or resume reply."""
        await self._send(encode_resume(username, token))
        return decode_login_reply(_check(await self.receive_packet(), MessageCode.RESUME).body)


async def _start_tls(
    stream: trio.abc.Stream, context: ssl.SSLContext, server_hostname: str
) -> trio.SSLStream[trio.abc.Stream]:
    tls = trio.SSLStream(stream, context, server_hostname=server_hostname)
    try:
        await tls.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return tls


class BlockingClient:
    """The same client over a plain blocking socket, for scripts and threads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._decoder = FrameDecoder(_CLIENT_MAX_PACKET)

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        timeout: float | None = 10.0,
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> BlockingClient:
        """Connect over TCP, or over TLS with ``tls`` (see :meth:`Client.connect`)."""
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=server_hostname or host)
            except BaseException:
                sock.close()
                raise
        return cls(sock)

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, code: int, body: bytes = b"") -> None:
        self.sock.sendall(encode(code, body))

    def shutdown_write(self) -> None:
        """Half-close: tell the server no more requests follow."""
        self.sock.shutdown(socket.SHUT_WR)

    def receive_packet(self) -> Packet:
        while (packet := _next_packet(self._decoder)) is None:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLEOFError) as exc:
                raise ConnectionClosed("connection reset by the server") from exc
            _feed(self._decoder, data)
        return packet

    def at_eof(self) -> bool:
        try:
            packet = self.receive_packet()
        except ConnectionClosed:
            return True
        raise UnexpectedReply(f"expected EOF, got a packet: {packet}")

    def request(self, code: int, body: bytes = b"") -> Packet:
        self.send(code, body)
        return self.receive_packet()

    def ping(self) -> float:
        """Round trip of one ping, in seconds."""
        start = time.perf_counter()
        self.sock.sendall(PING)
        _check(self.receive_packet(), MessageCode.PING)
        return time.perf_counter() - start

    def register(
        self, username: str | bytes, password: str | bytes, itype: int = 1
    ) -> RegisterReply:
        self.sock.sendall(encode_register(username, password, itype))
        return decode_register_reply(_check(self.receive_packet(), MessageCode.REGISTER).body)

    def login(self, username: str | bytes, password: str | bytes) -> LoginReply:
        self.sock.sendall(encode_login(username, password))
        return decode_login_reply(_check(self.receive_packet(), MessageCode.LOGIN).body)

    def resume(self, username: str | bytes, token: bytes) -> LoginReply:
        """Log in with the session token of an earlier login or resume reply."""
        self.sock.sendall(encode_resume(username, token))
        return decode_login_reply(_check(self.receive_packet(), MessageCode.RESUME).body)
