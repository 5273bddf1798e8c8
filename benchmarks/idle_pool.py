"""Idle HTTP connections from one host against new binary clients: how many are refused.

::

    python benchmarks/idle_pool.py                 # per-network caps off, then the defaults
    python benchmarks/idle_pool.py --idle 8000 --clients 500

Starts ``python -m trioserver`` (2 workers, ``server.max_connections`` 3,000 each, loopback,
loopback not exempt from the caps) through ``hostile.server``, opens ``--idle`` HTTP
connections from 127.0.0.1 that never send a byte (more than the whole pool), then
``--clients`` binary clients from 127.0.0.2 and up (two per address) that each send a ping:
answered, or closed (refused). Once with ``server.max_connections_per_network = 0`` (the
server as it was), once with the default cap. Every phase is bounded in time; it prints
figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostile import free_port, packet, server


def open_idle(port: int, count: int, budget: float) -> list[socket.socket]:
    """``count`` connections that send nothing (fewer if the budget runs out)."""
    socks: list[socket.socket] = []
    stop = time.monotonic() + budget
    while len(socks) < count and time.monotonic() < stop:
        sock = socket.socket()
        sock.settimeout(2)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        socks.append(sock)
    return socks


def binary_client(port: int, source: str) -> bool:
    """True when a ping from ``source`` is answered; False when the server closed it."""
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.bind((source, 0))
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(packet(0))
            return len(sock.recv(8)) == 8
        except OSError:
            return False


def run(tmp: Path, idle: int, clients: int, *settings: str) -> tuple[int, int, int]:
    http_port = free_port()
    with server(
        tmp,
        f'http.listen=["127.0.0.1:{http_port}"]',
        "server.max_connections=3000",
        "server.connection_cap_exempt=[]",
        "connection.flood_check=false",
        *settings,
    ) as (port, _admin, _log):
        held = open_idle(http_port, idle, budget=60.0)
        try:
            time.sleep(2.0)  # let the workers take (or refuse) the whole backlog
            still_open = 0
            for sock in held:
                sock.setblocking(False)
                try:
                    sock.recv(1)  # a 503 or the close: refused
                except BlockingIOError:
                    still_open += 1  # nothing to read: held by the server
                except OSError:
                    pass
            served = sum(binary_client(port, f"127.0.0.{2 + i // 2}") for i in range(clients))
        finally:
            for sock in held:
                with contextlib.suppress(OSError):
                    sock.close()
    return still_open, served, clients - served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=int, default=8000)
    parser.add_argument("--clients", type=int, default=500)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"{args.idle} idle HTTP connections from 127.0.0.1, then {args.clients} binary clients")
    for name, settings in (
        ("caps off", ("server.max_connections_per_network=0",)),
        ("default cap (1000 per worker)", ()),
    ):
        with tempfile.TemporaryDirectory(prefix="idle-pool-") as tmp:
            held, served, refused = run(Path(tmp), args.idle, args.clients, *settings)
        print(
            f"{name:32} idle held open: {held:5d}   binary served: {served:4d}   "
            f"refused: {refused:4d} ({100 * refused / args.clients:.0f} %)"
        )


if __name__ == "__main__":
    main()
