"""Worker to worker on one machine: a direct Unix stream link against a relay through a
poll-loop process (the shape the prefork master has). Why the hub's mesh is direct.

    python benchmarks/mesh_bench.py [--messages 200000] [--size 100]

A sender writes ``--messages`` length-prefixed frames of ``--size`` bytes, in batches of
64 (as the mesh's writer joins what is pending); the receiver reads and splits them. The
relay reads frames, looks at each (to route it) and writes it on. Each process reports its
own CPU time (getrusage); printed: messages per second of wall time and CPU microseconds
per message, summed over the processes of each path.
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import socket
import struct
import time

FRAME = struct.Struct(">I")
BATCH = 64


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def send(sock: socket.socket, count: int, size: int) -> None:
    frame = FRAME.pack(size) + b"x" * size
    batch = frame * BATCH
    for _ in range(count // BATCH):
        sock.sendall(batch)
    sock.shutdown(socket.SHUT_WR)


def frames(sock: socket.socket):  # type: ignore[no-untyped-def]
    buffer = b""
    while True:
        data = sock.recv(1 << 18)
        if not data:
            return
        buffer = buffer + data if buffer else data
        pos, end = 0, len(buffer)
        out = []
        while end - pos >= 4:
            (n,) = FRAME.unpack_from(buffer, pos)
            if end - pos - 4 < n:
                break
            out.append(buffer[pos : pos + 4 + n])
            pos += 4 + n
        buffer = buffer[pos:]
        yield out


def receive(sock: socket.socket) -> int:
    return sum(len(batch) for batch in frames(sock))


def relay(inbound: socket.socket, outbound: socket.socket) -> None:
    poll = select.poll()
    poll.register(inbound, select.POLLIN)
    gen = frames(inbound)
    while True:
        poll.poll()
        try:
            batch = next(gen)
        except StopIteration:
            break
        for frame in batch:  # a relay must look at each message to route it
            assert frame[4:5] == b"x"
        outbound.sendall(b"".join(batch))
    outbound.shutdown(socket.SHUT_WR)


def child(work, report_fd: int) -> None:  # type: ignore[no-untyped-def]
    start = cpu()
    result = work()
    os.write(report_fd, struct.pack(">dq", cpu() - start, result or 0))
    os._exit(0)


def run(path: str, count: int, size: int) -> tuple[float, float, int]:
    r, w = os.pipe()
    a, b = socket.socketpair()
    plan = [lambda: send(a, count, size)]
    if path == "relay":
        c, d = socket.socketpair()
        plan += [lambda: relay(b, c), lambda: receive(d)]
    else:
        plan += [lambda: receive(b)]
    start = time.perf_counter()
    pids = []
    for work in plan:
        pid = os.fork()
        if pid == 0:
            child(work, w)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    wall = time.perf_counter() - start
    total_cpu, received = 0.0, 0
    for _ in plan:
        used, got = struct.unpack(">dq", os.read(r, 16))
        total_cpu += used
        received = max(received, got)
    return wall, total_cpu, received


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for path in ("direct", "relay"):
        for _ in range(args.runs):
            wall, used, got = run(path, args.messages, args.size)
            assert got == args.messages // BATCH * BATCH, got
            print(
                f"{path:6} {got / wall:12,.0f} messages/s  {used / got * 1e6:6.2f} CPU µs/message"
            )


if __name__ == "__main__":
    main()
