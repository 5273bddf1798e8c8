"""Bare trio server of the binary protocol: the ceiling for anything built on trio.

One task per connection. Each receive is parsed completely (every whole packet it
brings, CRC checked), and all the replies it produces go out in one send. Bad CRC,
unknown codes and wrong sizes are dropped silently; a pkgLen outside 8..29000
closes the connection. Nothing is printed on the hot path.

    python benchmarks/baselines/bare_trio.py --port 10000
    python benchmarks/baselines/bare_trio.py --port 10443 --certfile C --keyfile K   # TLS

With ``--certfile`` it is the bare trio ``SSLStream`` echo the TLS benchmark compares
against: ``trio.serve_ssl_over_tcp`` with a context made as trioserver makes its own
(``ssl.create_default_context(Purpose.CLIENT_AUTH)``, TLS 1.2 minimum), the same
handler over the ``SSLStream``.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import ssl
import sys
import zlib
from functools import partial

import trio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _protocol import HEADER, LOGIN_REPLY, MAX_PACKET, PING, REGISTER_REPLY

RECEIVE_SIZE = 65536


async def handle(stream: trio.abc.Stream) -> None:
    unpack_from = HEADER.unpack_from
    crc32 = zlib.crc32
    buf = bytearray()
    try:
        while True:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                return
            if buf:
                buf += data
                view: bytes | bytearray = buf
            else:
                view = data
            end = len(view)
            pos = 0
            out = bytearray()
            while end - pos >= 8:
                length, code, crc = unpack_from(view, pos)
                if length < 8 or length > MAX_PACKET:
                    return
                if end - pos < length:
                    break
                if length == 8:
                    if code == 0 and crc == 0:
                        out += PING
                elif crc32(view[pos + 8 : pos + length]) == crc:
                    if code == 5 and length == 108:
                        out += REGISTER_REPLY
                    elif code == 6 and length == 104:
                        out += LOGIN_REPLY
                pos += length
            buf = bytearray(view[pos:]) if pos < end else bytearray()
            if out:
                await stream.send_all(out)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main(host: str, port: int, context: ssl.SSLContext | None = None) -> None:
    """Serve until SIGTERM or SIGINT (the benchmark runner stops servers with SIGTERM)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            if context is None:
                serve = partial(trio.serve_tcp, handle, port, host=host, backlog=65535)
            else:
                serve = partial(
                    trio.serve_ssl_over_tcp, handle, port, context, host=host, backlog=65535
                )
            nursery.start_soon(serve)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=10000)
    parser.add_argument("--certfile", help="serve TLS with this PEM certificate (chain)")
    parser.add_argument("--keyfile", help="its private key")
    args = parser.parse_args()
    raise_fd_limit()
    tls = None
    if args.certfile:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(args.certfile, args.keyfile)
    trio.run(main, args.host, args.port, tls)
