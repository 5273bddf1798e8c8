"""Hand-written asyncio + uvloop ``Protocol`` server of the binary protocol.

The fastest thing a Python user would write: ``data_received`` parses every whole
packet the chunk brings (CRC checked) and answers them with one ``transport.write``.
Same replies and same drop/close rules as ``bare_trio.py``.

    python benchmarks/baselines/uvloop_server.py --port 10000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import sys
import zlib
from typing import cast

import uvloop

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _protocol import HEADER, LOGIN_REPLY, MAX_PACKET, PING, REGISTER_REPLY

_unpack_from = HEADER.unpack_from
_crc32 = zlib.crc32


class BinaryProtocol(asyncio.Protocol):
    __slots__ = ("buf", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        view = self.buf + data if self.buf else data
        end = len(view)
        pos = 0
        out = bytearray()
        while end - pos >= 8:
            length, code, crc = _unpack_from(view, pos)
            if length < 8 or length > MAX_PACKET:
                if self.transport is not None:
                    self.transport.close()
                return
            if end - pos < length:
                break
            if length == 8:
                if code == 0 and crc == 0:
                    out += PING
            elif _crc32(view[pos + 8 : pos + length]) == crc:
                if code == 5 and length == 108:
                    out += REGISTER_REPLY
                elif code == 6 and length == 104:
                    out += LOGIN_REPLY
            pos += length
        self.buf = view[pos:] if pos < end else b""
        if out and self.transport is not None:
            self.transport.write(out)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # the runner stops servers with SIGTERM
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(BinaryProtocol, host, port, backlog=65535)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=10000)
    args = parser.parse_args()
    raise_fd_limit()
    uvloop.run(main(args.host, args.port))
