"""Server instructions per TLS round trip, counted by callgrind: trioserver beside bare trio.

Seconds on this shared 2-core machine drift by tens of percent from run to run;
instruction counts do not. Each server (``bare-trio-tls``: ``baselines/bare_trio.py``
over ``trio.serve_ssl_over_tcp``; ``trioserver-tls``: one worker without a master,
``--no-master``) runs under ``valgrind --tool=callgrind``; a client in another process,
not counted, opens one TLS 1.3 connection and does ``ROUNDS`` round trips of ``BATCH``
pipelined pings (one TLS record each way per round). Each server runs twice, a short
and a long run, and the difference per round trip is printed: startup, the handshake
and shutdown cancel out; the steady state remains. Only the server is counted.

``--handshakes`` counts connections instead: each round is a new connection, its full
handshake, one ping and its reply, and a close; with ``--resume`` every connection but
the first offers the TLS 1.3 session ticket the previous one received (``session=``),
and the client checks that the server resumed it.

::

    python benchmarks/tls_instructions.py                 # batches of 16 and of 1
    python benchmarks/tls_instructions.py --batch 16 --rounds 200 1200
    python benchmarks/tls_instructions.py --handshakes --rounds 50 250 [--resume]
    python benchmarks/tls_instructions.py --conns 100 --batch 16 --rounds 10 60  # per conn

trioserver runs as in ``tls_bench.py`` (flood check and heartbeat off) and with
``metrics.interval=0``: under valgrind a wall-clock second holds some fifty times fewer
round trips, so once-a-second work would weigh fifty times what it does natively.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as suite  # the suite's helpers: free ports, stop by PID
from tls_bench import make_certificate

ROOT = Path(__file__).resolve().parent.parent
PING = b"\x00\x08\x00\x00\x00\x00\x00\x00"
WARMUP_ROUNDS = 20
TARGETS = ("bare-trio-tls", "trioserver-tls")


def server_command(target: str, port: int, cert: Path, key: Path) -> list[str]:
    python = os.path.realpath(sys.executable)
    if target == "bare-trio-tls":
        bare = str(ROOT / "benchmarks" / "baselines" / "bare_trio.py")
        return [python, bare, "--port", str(port), "--certfile", str(cert), "--keyfile", str(key)]
    settings = [
        "accounts.url=memory:",
        "http.listen=[]",
        "server.listen=[]",
        f'server.tls_listen=["127.0.0.1:{port}"]',
        f'tls.certificate="{cert}"',
        f'tls.private_key="{key}"',
        "connection.flood_check=false",
        "connection.heartbeat=false",
        "metrics.interval=0",
        "master.pidfile=",
    ]
    return [python, "-m", "trioserver", "serve", "--no-master"] + [
        a for s in settings for a in ("--set", s)
    ]


def connect(port: int) -> socket.socket:
    deadline = time.monotonic() + 300
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=600)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # the server is still starting under valgrind


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def handshakes(port: int, rounds: int, resume: bool) -> None:
    """``rounds`` connections (after warm-up ones): handshake, one ping, close."""
    context = client_context()
    session: ssl.SSLSession | None = None
    for i in range(WARMUP_ROUNDS + rounds):
        with context.wrap_socket(connect(port), session=session) as sock:
            sock.sendall(PING)
            got = b""
            while len(got) < len(PING):
                chunk = sock.recv(64)  # the reply comes after the session tickets
                if not chunk:
                    raise SystemExit("the server closed the connection")
                got += chunk
            if resume and session is not None and not sock.session_reused:
                raise SystemExit(f"connection {i}: the server did not resume the session")
            session = sock.session if resume else None


def client(port: int, rounds: int, batch: int, conns: int = 1) -> None:
    """``conns`` TLS connections: warm-up rounds, then ``rounds`` of ``batch`` pipelined
    pings on each (all of a round's requests are sent before its replies are read)."""
    context = client_context()
    socks = [context.wrap_socket(connect(port)) for _ in range(conns)]
    try:
        data = PING * batch
        for _ in range(WARMUP_ROUNDS + rounds):
            for sock in socks:
                sock.sendall(data)
            for sock in socks:
                got = 0
                while got < len(data):
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise SystemExit("the server closed the connection")
                    got += len(chunk)
    finally:
        for sock in socks:
            sock.close()


def count(
    target: str,
    rounds: int,
    batch: int,
    cert: Path,
    key: Path,
    logdir: Path,
    mode: str,
    conns: int = 1,
) -> int:
    """``mode``: "ping" (``batch`` per round), "full" or "resumed" handshakes."""
    port = suite.free_port()
    out = logdir / f"{target}-{mode}-{batch}-{rounds}.txt"
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        *server_command(target, port, cert, key),
    ]
    with open(out, "wb") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=logdir,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            start_new_session=True,
        )
    suite.STARTED[proc.pid] = proc
    try:
        if mode == "ping":
            client(port, rounds, batch, conns)
        else:
            handshakes(port, rounds, resume=mode == "resumed")
    finally:
        suite.stop(proc, timeout=120)  # callgrind writes its count as the server exits
    match = re.search(r"Collected : (\d+)", out.read_text())
    if match is None:
        raise SystemExit(f"callgrind printed no count (see {out})")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="*", default=[16, 1])
    parser.add_argument("--rounds", type=int, nargs=2, default=[200, 1200])
    parser.add_argument("--targets", nargs="*", default=list(TARGETS))
    parser.add_argument("--conns", type=int, default=1, help="connections, each one batch")
    parser.add_argument("--handshakes", action="store_true", help="count connections")
    parser.add_argument("--resume", action="store_true", help="with --handshakes: resumed")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian package valgrind)")
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    ).stdout.strip()
    print(f"code: {commit}")
    work = Path(tempfile.mkdtemp(prefix="tls-instructions-"))
    cert, key = make_certificate(work)
    short, long = args.rounds
    mode = ("resumed" if args.resume else "full") if args.handshakes else "ping"
    try:
        for batch in [1] if args.handshakes else args.batch:
            what = f"{mode} handshakes" if args.handshakes else f"batch {batch:>3}"
            per: dict[str, float] = {}
            for target in args.targets:
                low = count(target, short, batch, cert, key, work, mode, args.conns)
                high = count(target, long, batch, cert, key, work, mode, args.conns)
                per[target] = (high - low) / (long - short) / args.conns
                unit = "connection" if args.handshakes else "round trip"
                print(
                    f"{what} {target}: {per[target]:,.0f} server instructions per {unit}"
                    + ("" if args.handshakes else f", {per[target] / batch:,.0f} per ping"),
                    flush=True,
                )
            if len(per) == 2:
                bare, ours = per["bare-trio-tls"], per["trioserver-tls"]
                print(f"{what}: bare / trioserver = {bare / ours:.2f}", flush=True)
    finally:
        suite.stop_all()


if __name__ == "__main__":
    main()
