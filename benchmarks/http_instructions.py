"""Server instructions per short HTTP connection and per keep-alive request (callgrind).

Seconds on this shared 2-core machine drift by tens of percent from run to run;
instruction counts do not. This starts one HTTP server under ``valgrind
--tool=callgrind`` and drives it from this process (not counted) with a blocking
client on loopback, one request at a time, then stops the server with SIGTERM (it
exits by itself, so callgrind counts everything up to its exit). Each load runs
twice, short and long; the difference per connection (or request) is the steady
state, with start-up and stop cancelled out. Only the server is counted.

Loads:

- ``close``: connect, ``GET /index.html HTTP/1.0``, read to EOF (the server closes
  first, as webbench's pattern has it), close: instructions per connection;
- ``keepalive``: one connection, ``GET /index.html HTTP/1.1`` after ``GET``:
  instructions per request.

The count is the same on every run only if the server's path is: the listener has
``TCP_DEFER_ACCEPT`` (a connection is accepted with its request there, the path of a
loaded server), and after each reply the client waits until the server's threads
are all asleep, one in ``epoll_wait`` (``/proc``), so the server has finished and
waits when the next request comes, however busy the machine is (on a keep-alive
connection that is the quiet path: one eager read that finds nothing, then a wait).

Servers: ``trioserver`` (a ``Worker`` with an HTTP listener only, every HTTP setting at
its default, as ``http_bench.py --serve`` runs it) and ``bare`` (trio +
httptools, ``http_bench.bare_handler`` under ``trio.serve_listeners``: the ceiling
on trio). ``--tree DIR`` imports trioserver from DIR instead (an earlier checkout:
``git archive C trioserver | tar -x -C DIR``)::

    python benchmarks/http_instructions.py                      # both servers, both loads
    python benchmarks/http_instructions.py --server trioserver --load close
    python benchmarks/http_instructions.py --tree /tmp/before --server trioserver
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trio

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
REQUEST_10 = b"GET /index.html HTTP/1.0\r\nHost: bench\r\n\r\n"
REQUEST_11 = b"GET /index.html HTTP/1.1\r\nHost: bench\r\n\r\n"
BODY = b"x" * 1024
#: Seconds the client pauses after each reply before it looks whether the server waits
#: (``_wait_idle``: every thread asleep, one in ``epoll_wait``).
PAUSE = 0.002


def _serve(server: str, root: str, port_file: str) -> None:
    """The counted process: one server on 127.0.0.1, its port written to ``port_file``;
    SIGTERM stops it."""
    import trio

    if server == "bare":
        sys.path.insert(0, str(BENCH))
        from http_bench import bare_handler

        async def bare() -> None:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=4096)
            _defer_accept(listeners[0].socket)
            _write_port(port_file, listeners[0].socket.getsockname()[1])
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(trio.serve_listeners, bare_handler(root), listeners)
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        break

        trio.run(bare)
        return

    from trioserver.config import Address, Config
    from trioserver.worker import Worker, open_listeners, serve_until_signalled

    config = Config().replace(
        http__document_root=Path(root), server__max_connections=4096, server__backlog=4096
    )

    async def ours() -> None:
        http = await open_listeners([Address("127.0.0.1", 0)], 4096)
        _defer_accept(http[0].sock)
        _write_port(port_file, http[0].sock.getsockname()[1])
        await serve_until_signalled(Worker(config, listeners=[], http_listeners=http))

    trio.run(ours)


def _write_port(path: str, port: int) -> None:
    Path(path).write_text(str(port))


def _defer_accept(sock: socket.socket | trio.socket.SocketType) -> None:
    """The listener wakes once a request is there, never between the handshake and it:
    every accepted connection then finds its request (the path a loaded server takes),
    whatever the client's timing, so the count is the same on every run."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)


def _read_reply(sock: socket.socket, until_eof: bool) -> None:
    """One reply: to EOF, or exactly head + 1 KiB body."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            if until_eof:
                break
            raise RuntimeError(f"EOF after {len(data)} bytes")
        data += chunk
        if not until_eof and data.endswith(BODY) and b"\r\n\r\n" in data:
            _, _, body = data.partition(b"\r\n\r\n")
            if len(body) == len(BODY):
                break
    if not data.startswith(b"HTTP/1.1 200 ") or not data.endswith(BODY):
        raise RuntimeError(f"unexpected reply {data[:80]!r}")


def _wait_idle(pid: int) -> None:
    """Until every thread of the server is asleep in ``epoll_wait`` or a futex (its loop
    waits for the next request; valgrind's own threads sleep), at most a second."""
    deadline = time.monotonic() + 1.0
    tasks = Path(f"/proc/{pid}/task")
    while time.monotonic() < deadline:
        try:
            states = [
                ((t / "stat").read_text().rpartition(")")[2].split()[0], (t / "wchan").read_text())
                for t in tasks.iterdir()
            ]
        except OSError:
            return
        if all(state == "S" for state, _ in states) and any(
            "epoll" in wchan for _, wchan in states
        ):
            return
        time.sleep(PAUSE / 10)


def _drive(port: int, load: str, count: int, pid: int) -> None:
    """``count`` connections or requests, one at a time, each after the server has
    finished the one before and waits (so the server's path is the same every time)."""
    if load == "close":
        for _ in range(count):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(REQUEST_10)
                _read_reply(sock, until_eof=True)
            time.sleep(PAUSE)
            _wait_idle(pid)
        return
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            sock.sendall(REQUEST_11)
            _read_reply(sock, until_eof=False)
            time.sleep(PAUSE)
            _wait_idle(pid)


def _count(server: str, load: str, count: int, tree: Path, root: str) -> int:
    """Instructions the server ran for ``count`` connections or requests, start to exit."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port")
        proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                os.path.realpath(sys.executable),
                __file__,
                "--child",
                server,
                root,
                port_file,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
        )
        try:
            deadline = time.monotonic() + 300
            while not os.path.exists(port_file) or not Path(port_file).read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start:\n{proc.communicate()[1][-2000:]}")
                time.sleep(0.2)
            time.sleep(0.5)  # let it reach its accept loop (not counted either way)
            _drive(int(Path(port_file).read_text()), load, count, proc.pid)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    match = re.search(r"Collected : (\d+)", err)
    if match is None:
        raise SystemExit(f"callgrind printed no count:\n{err[-2000:]}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", choices=["trioserver", "bare", "both"], default="both")
    parser.add_argument("--load", choices=["close", "keepalive", "both"], default="both")
    parser.add_argument("--counts", type=int, nargs=2, default=[200, 1200])
    parser.add_argument("--tree", type=Path, default=ROOT, help="import trioserver from here")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _serve(*args.child)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian package valgrind)")
    tree = args.tree.resolve()
    commit = subprocess.run(
        ["git", "-C", str(tree), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    ).stdout.strip()
    print(f"code: {tree} {commit}")
    servers = ["bare", "trioserver"] if args.server == "both" else [args.server]
    loads = ["close", "keepalive"] if args.load == "both" else [args.load]
    short, long = args.counts
    with tempfile.TemporaryDirectory() as root:
        os.chmod(root, 0o755)
        Path(root, "index.html").write_bytes(BODY)
        for load in loads:
            unit = "connection" if load == "close" else "request"
            counts = {}
            for server in servers:
                high = _count(server, load, long, tree, root)
                low = _count(server, load, short, tree, root)
                counts[server] = per = (high - low) / (long - short)
                print(f"{server:>10} {load:>9}: {per:,.0f} server instructions per {unit}")
            if len(counts) == 2:
                ratio = counts["trioserver"] / counts["bare"]
                print(f"{'':>10} {load:>9}: trioserver / bare {ratio:.2f}")


if __name__ == "__main__":
    main()
