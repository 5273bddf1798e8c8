"""Bare trio + wsproto server of the binary protocol over WebSocket: what trioserver's
WebSocket transport is measured against.

One task per connection on ``trio.serve_tcp``; wsproto does the handshake (its h11
side) and the frames, as a plain trio + wsproto program would. The packets are handled
as in ``bare_trio.py`` (every whole packet a receive brings, CRC checked), and all the
replies one receive produces go out as one binary message in one send. Nothing is
printed on the hot path.

    python benchmarks/baselines/bare_ws.py --port 8080      # ws://127.0.0.1:8080/ (any path)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import zlib
from functools import partial

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Request,
    TextMessage,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _protocol import HEADER, LOGIN_REPLY, MAX_PACKET, PING, REGISTER_REPLY
from bare_trio import raise_fd_limit

RECEIVE_SIZE = 65536


async def handle(stream: trio.SocketStream) -> None:
    unpack_from = HEADER.unpack_from
    crc32 = zlib.crc32
    ws = WSConnection(ConnectionType.SERVER)
    buf = bytearray()
    try:
        while True:
            data = await stream.receive_some(RECEIVE_SIZE)
            ws.receive_data(data or None)
            wire = bytearray()
            out = bytearray()
            for event in ws.events():
                kind = type(event)
                if kind is BytesMessage:
                    buf += event.data
                elif kind is Request:
                    wire += ws.send(AcceptConnection(subprotocol="trioserver.v1"))
                elif kind is Ping:
                    wire += ws.send(event.response())
                elif kind is CloseConnection:
                    if ws.state.name == "REMOTE_CLOSING":
                        await stream.send_all(ws.send(event.response()))
                    return
                elif kind is TextMessage:
                    await stream.send_all(ws.send(CloseConnection(1003)))
                    return
            end = len(buf)
            pos = 0
            while end - pos >= 8:
                length, code, crc = unpack_from(buf, pos)
                if length < 8 or length > MAX_PACKET:
                    return
                if end - pos < length:
                    break
                if length == 8:
                    if code == 0 and crc == 0:
                        out += PING
                elif crc32(buf[pos + 8 : pos + length]) == crc:
                    if code == 5 and length == 108:
                        out += REGISTER_REPLY
                    elif code == 6 and length == 104:
                        out += LOGIN_REPLY
                pos += length
            if pos:
                del buf[:pos]
            if out:
                wire += ws.send(Message(data=bytes(out)))
            if wire:
                await stream.send_all(wire)
            if not data:
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


async def main(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT (the benchmark runner stops servers with SIGTERM)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(trio.serve_tcp, handle, port, host=host, backlog=65535))
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    raise_fd_limit()
    trio.run(main, args.host, args.port)
