"""Bare trio fan-out: the floor for a broadcast on trio. Accepts connections into a list;
a task sends one pre-encoded packet to every socket at a steady rate with a non-blocking
``send`` each (what does not fit is dropped). No groups, caps, ordering or kicks.

    python benchmarks/fanout/bare.py --port 10000 --rate 10 [--body 32]
"""

from __future__ import annotations

import argparse
import socket
import struct
import time
import zlib

import trio

STAMP = struct.Struct(">QI")
HEADER = struct.Struct(">HHI")


async def main(port: int, rate: float, body: int) -> None:
    socks: list[socket.socket] = []
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    pad = b"\0" * max(0, body - STAMP.size)

    async def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(listener)
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(sock)

    async def broadcast() -> None:
        interval = 1 / rate
        deadline = trio.current_time()
        sequence = 0
        while True:
            deadline += interval
            await trio.sleep_until(deadline)
            sequence += 1
            payload = STAMP.pack(time.monotonic_ns(), sequence) + pad
            packet = HEADER.pack(8 + len(payload), 200, zlib.crc32(payload)) + payload
            for sock in socks:
                try:
                    sock.send(packet)
                except OSError:
                    pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        nursery.start_soon(broadcast)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=10)
    parser.add_argument("--body", type=int, default=32)
    args = parser.parse_args()
    trio.run(main, args.port, args.rate, args.body)
