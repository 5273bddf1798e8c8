"""A trio stream over a WebSocket client (wsproto's, with its own handshake), for tests.

``trioserver.client.Client`` takes any stream, so ``Client(await WebSocketStream.connect(
host, port))`` speaks the binary protocol over WebSocket exactly as it does over TCP.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
)


class Refused(ConnectionError):
    """The server answered the handshake with ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(f"handshake refused with {status}")
        self.status = status


class WebSocketStream(trio.abc.Stream):
    """Binary messages in, payload bytes out; ``close`` is the server's close once seen."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.close: CloseConnection | None = None
        self.subprotocol: str | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        path: str = "/ws",
        *,
        subprotocols: Sequence[str] = ("trioserver.v1",),
        origin: str | None = None,
    ) -> WebSocketStream:
        stream = await trio.open_tcp_stream(host, port)
        ws = WSConnection(ConnectionType.CLIENT)
        extra = [(b"origin", origin.encode())] if origin else []
        request = Request(
            host=f"{host}:{port}", target=path, subprotocols=list(subprotocols), extra_headers=extra
        )
        await stream.send_all(ws.send(request))
        self = cls(stream, ws)
        while True:
            data = await stream.receive_some(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    self.subprotocol = event.subprotocol
                    return self
                if isinstance(event, RejectConnection):
                    await stream.aclose()
                    raise Refused(event.status_code)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while True:
            out = []
            for event in self.ws.events():
                if isinstance(event, BytesMessage):
                    out.append(event.data)
                elif isinstance(event, Ping):
                    await self.stream.send_all(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.close = event
                    if self.ws.state.name == "REMOTE_CLOSING":
                        await self.stream.send_all(self.ws.send(event.response()))
            if out:
                return b"".join(out)
            if self.close is not None:
                return b""
            data = await self.stream.receive_some(65536)
            if not data:
                return b""
            self.ws.receive_data(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(self.ws.send(Message(data=bytes(data))))

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()
