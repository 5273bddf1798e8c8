"""A reload (SIGHUP) under 10,000 open connections: how long it takes, and the longest pause
any connection saw, with the handoff and with the plain drain.

::

    python benchmarks/reload_bench.py                      # 10,000 connections, both modes
    python benchmarks/reload_bench.py --connections 2000 --pace 0.5

Starts ``python -m trioserver`` (2 workers, loopback) through ``hostile.server``, opens
``--connections`` binary connections, each pinging once every ``--pace`` seconds (one ping
in flight), then sends the master SIGHUP. A connection the server closes reconnects at
once and pings again, as a client would. Printed per mode:

- reload: from the SIGHUP until every old worker has exited (the master's own figures
  from its log beside it: new workers ready after, handoff done in);
- longest pause: the longest time any connection waited from a ping to its answer,
  a reconnect included; the 99th percentile of the pings sent during the reload;
- disconnects: connections the server closed during the reload.

Every phase is bounded in time; it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import platform
import re
import resource
import selectors
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostile import packet, server

PING = packet(0)


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"machine: {model}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


class Clients:
    """Connections pinging at a pace, reconnecting when closed; every ping's wait kept."""

    def __init__(self, port: int, count: int, pace: float) -> None:
        self.port = port
        self.pace = pace
        self.selector = selectors.DefaultSelector()
        self.socks: list[socket.socket | None] = [None] * count
        self.buffers = [b""] * count
        self.sent_at = [0.0] * count
        self.in_flight = [False] * count
        self.waits: list[tuple[float, float]] = []  # (sent at, seconds to the answer)
        self.disconnects = 0
        self.due: collections.deque[tuple[float, int]] = collections.deque()
        start = time.monotonic()
        for i in range(count):
            self._connect(i)
            # Spread the first pings over one pace so the load is even.
            self.due.append((start + pace * i / count, i))

    def _connect(self, i: int) -> None:
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                break
            except OSError:
                time.sleep(0.01)  # refused or reset while the server turns over: retry
        sock.setblocking(False)
        self.socks[i] = sock
        self.selector.register(sock, selectors.EVENT_READ, i)

    def _send(self, i: int, now: float, first: bool = True) -> None:
        sock = self.socks[i]
        assert sock is not None
        if first:
            self.sent_at[i] = now
        self.in_flight[i] = True
        try:
            sock.send(PING)
        except OSError:
            self._lost(i)

    def _lost(self, i: int) -> None:
        """Closed by the server: reconnect and ask again; the ping's wait goes on."""
        sock = self.socks[i]
        if sock is not None:
            self.selector.unregister(sock)
            sock.close()
        self.disconnects += 1
        self.buffers[i] = b""
        self._connect(i)
        if self.in_flight[i]:
            self._send(i, time.monotonic(), first=False)

    def run(self, seconds: float) -> None:
        stop = time.monotonic() + seconds
        while (now := time.monotonic()) < stop:
            while self.due and self.due[0][0] <= now:
                _, i = self.due.popleft()
                self._send(i, now)
            wait = min(0.05, max(0.0, self.due[0][0] - now)) if self.due else 0.05
            for key, _ in self.selector.select(wait):
                i = key.data
                sock = self.socks[i]
                assert sock is not None
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._lost(i)
                    continue
                buf = self.buffers[i] + data
                answered = 0
                while len(buf) >= 8:
                    size = int.from_bytes(buf[:2], "big")
                    if len(buf) < size:
                        break
                    buf = buf[size:]
                    answered += 1
                self.buffers[i] = buf
                if answered and self.in_flight[i]:
                    self.in_flight[i] = False
                    done = time.monotonic()
                    self.waits.append((self.sent_at[i], done - self.sent_at[i]))
                    self.due.append((done + self.pace, i))

    def close(self) -> None:
        for sock in self.socks:
            if sock is not None:
                sock.close()
        self.selector.close()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def children(master: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
                if fields[1] == str(master) and fields[0] != "Z":
                    found.append(int(entry))
    return found


def master_pid(tmp: Path) -> int:
    found = re.search(r"\[master (\d+)\]", (tmp / "server.log").read_text())
    assert found is not None
    return int(found.group(1))


def one(tmp: Path, handoff: bool, connections: int, pace: float) -> None:
    mode = "handoff" if handoff else "drain"
    with server(
        tmp,
        f"master.handoff={'true' if handoff else 'false'}",
        f"server.max_connections={connections + 2000}",
        "connection.flood_check=false",
        "connection.any_packet_refreshes=true",
        "metrics.log_interval=0",
    ) as (port, _admin, log):
        opened = time.monotonic()
        clients = Clients(port, connections, pace)
        try:
            print(f"{mode}: {connections} connections open in {time.monotonic() - opened:.1f} s")
            clients.run(3 * pace + 2)  # settle: every connection has pinged a few times
            master = master_pid(tmp)
            old = children(master)
            settled = len(clients.waits)
            before = max((w for _, w in clients.waits), default=0.0)
            clients.disconnects = 0
            hup = time.monotonic()
            os.kill(master, signal.SIGHUP)
            ended = None
            limit = hup + 60
            while time.monotonic() < limit:
                clients.run(0.1)
                if ended is None and not any(alive(pid) for pid in old):
                    ended = time.monotonic()
                    clients.run(2 * pace + 1)  # the pings sent during the reload come back
                    break
            during = [w for sent, w in clients.waits[settled:] if sent >= hup - pace]
            text = log.read_text()
        finally:
            clients.close()
    figures = re.findall(r"new workers ready on .* after ([\d.]+) s", text)
    handed = re.findall(r"reload: handoff done in ([\d.]+) s: (.*)", text)
    workers = re.findall(r"(worker \d+) \(pid \d+\) handed over in ([\d.]+) s: (\d+) moved", text)
    took = f"{ended - hup:.2f} s" if ended is not None else "over 60 s"
    during.sort()
    p99 = during[int(len(during) * 0.99)] if during else 0.0
    print(
        f"{mode}: reload {took} (new workers ready after {figures[-1] if figures else '?'} s"
        + (f", handoff done in {handed[-1][0]} s: {handed[-1][1]}" if handed else "")
        + ")"
        + "".join(f"; {name}: {moved} in {secs} s" for name, secs, moved in workers)
    )
    print(
        f"{mode}: longest pause {max(during, default=0.0) * 1e3:.0f} ms (before the reload: "
        f"{before * 1e3:.0f} ms), p99 {p99 * 1e3:.0f} ms over {len(during)} pings; "
        f"{clients.disconnects} disconnects"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--pace", type=float, default=1.0, help="seconds between pings")
    parser.add_argument("--mode", choices=("both", "handoff", "drain"), default="both")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * args.connections + 1000
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    print(machine() + f"; open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}")
    print(f"{args.connections} connections, one ping each every {args.pace:g} s, 2 workers")
    modes = {"both": (True, False), "handoff": (True,), "drain": (False,)}[args.mode]
    for handoff in modes:
        with tempfile.TemporaryDirectory() as tmp:
            one(Path(tmp), handoff, args.connections, args.pace)


if __name__ == "__main__":
    main()
