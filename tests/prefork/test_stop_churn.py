"""A graceful stop under connect/ping/close churn resets no client that got connected.

The last close of a listening socket resets every connection still queued in it
(Linux). A SIGTERM therefore first stops the sockets queueing new connections, then
the workers accept what is already queued and answer it in the drain: a client is
either answered or, if it had not connected yet, refused.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from real_server import Server, wait_for
from sample_apps import WHO

from trioserver.framer import FrameDecoder, Packet, encode

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


class Churn:
    """Client threads that connect, ping, read the reply and close, in a loop, until stopped.

    ``lost`` counts clients that had connected and then got no reply (a reset, or EOF
    first); a connect that fails (refused, timed out) is ``refused``.
    """

    def __init__(self, port: int, threads: int = 8) -> None:
        self.port = port
        self.answered = 0
        self.refused = 0
        self.lost: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Churn:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                with self._lock:
                    self.refused += 1
                continue
            outcome = self._ping(sock)
            with self._lock:
                if outcome is None:
                    self.answered += 1
                else:
                    self.lost.append(outcome)

    @staticmethod
    def _ping(sock: socket.socket) -> str | None:
        """None once the reply came; else what happened instead."""
        decoder = FrameDecoder(0xFFFF)
        try:
            with sock:
                sock.sendall(encode(WHO))
                while True:
                    event = decoder.next_packet()
                    if isinstance(event, Packet):
                        return None
                    data = sock.recv(65536)
                    if not data:
                        return "EOF before the reply"
                    decoder.receive_data(data)
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"

    def count(self) -> int:
        with self._lock:
            return self.answered


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    made: list[Server] = []
    yield made
    for server in made:
        server.kill_all()


def stop_under_churn(servers: list[Server], tmp: Path, master: bool) -> Churn:
    """Start a server (two workers, or one worker without a master), churn against it,
    SIGTERM it; the churn's outcomes."""
    mode = ["--workers", "2"] if master else ["--no-master"]
    server = Server(tmp, ["--listen", "127.0.0.1:0", "--app", "sample_apps:who_router", *mode])
    servers.append(server.start())
    if master:
        port = server.wait_ready(2)
    else:
        port = int(server.wait_log(r"serving the binary protocol on 127\.0\.0\.1:(\d+)")[0][1])
    with Churn(port) as churn:
        wait_for("500 answered pings", lambda: churn.count() >= 500, timeout=30)
        os.kill(server.pid, signal.SIGTERM)
        assert server.wait_exit(30) == 0
        refused = churn.refused
        wait_for("connects refused after the exit", lambda: churn.refused > refused + 8)
    return churn


@pytest.mark.parametrize("round_", range(3))
@pytest.mark.parametrize("master", [True, False], ids=["master", "no-master"])
def test_sigterm_under_churn_resets_no_connected_client(
    servers: list[Server], tmp_path: Path, master: bool, round_: int
) -> None:
    churn = stop_under_churn(servers, tmp_path, master)
    print(f"answered {churn.answered}, refused {churn.refused}, lost {len(churn.lost)}")
    assert churn.lost == []
