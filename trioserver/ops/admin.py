"""The master's admin listener: /metrics, /healthz and /status.json, served from its poll loop.

The master has no trio and must not have threads (it forks), so this is a tiny
HTTP/1.0-style server on non-blocking sockets that the master's ``poll`` drives
(it is a :class:`~trioserver.prefork.procs.Watcher`). Every client is bounded: a request
may be at most ``MAX_REQUEST`` bytes and must arrive within ``request_timeout``
seconds, the whole exchange must finish within ``timeout`` seconds, and one answer
per connection. A slow or stuck scraper therefore costs one socket and a buffer,
never a blocked master.

Idle clients cannot hold the listener. It never stops accepting: at
``max_clients`` open connections, the one that has waited longest without
sending a whole request is closed to make room (HAProxy and nginx also keep
accepting and put a short deadline on the request head instead of serving a
few clients at a time). A load balancer's probe sends its request at once, so
it is never the oldest idle client, and it is answered on the poll loop's
next turn however many silent sockets are open. A fixed small cap with the
rest waiting in the backlog would let a few dozen silent sockets delay /healthz
past a balancer's probe timeout.

Routes::

    GET /              the live dashboard (dashboard.html: charts drawn from /status.json)
    GET /metrics       Prometheus text format (trioserver.ops.metrics)
    GET /healthz       200 "serving"; 503 "starting" or "draining" (for load balancers)
    GET /status.json   the per-worker figures ``python -m trioserver status`` prints
"""

from __future__ import annotations

import contextlib
import errno
import importlib.resources
import logging
import os
import select
import socket
from collections.abc import Callable, Mapping
from typing import Final

import attrs

from ..config import Address
from ..sockets import bind_listener
from .metrics import CONTENT_TYPE, Gatherer

__all__ = ["MAX_REQUEST", "AdminPages", "AdminServer", "Response"]

log = logging.getLogger("trioserver.admin")

MAX_REQUEST: Final = 8192
#: Connections taken from the backlog per wake-up, so a burst cannot starve the loop.
_ACCEPT_BURST: Final = 16

#: The dashboard: one self-contained page (inline script and SVG, no external asset).
DASHBOARD: Final = importlib.resources.files(__package__).joinpath("dashboard.html").read_bytes()

_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


@attrs.frozen
class Response:
    status: int
    content_type: str
    body: bytes


class AdminPages:
    """What each admin path answers; pure (no sockets), so tests call it directly."""

    def __init__(self, gatherer: Gatherer, health: Callable[[], str]) -> None:
        self.gatherer = gatherer
        self.health = health

    def answer(self, method: str, target: str) -> Response:
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return Response(405, "text/plain", b"only GET and HEAD\n")
        health = self.health()
        if path == "/metrics":
            return Response(200, CONTENT_TYPE, self.gatherer.render(health=health).encode())
        if path == "/healthz":
            return Response(
                200 if health == "serving" else 503, "text/plain", f"{health}\n".encode()
            )
        if path == "/status.json":
            # The pid asked now: a daemon's master is not the process that bound this.
            body = self.gatherer.status_json(health=health, master_pid=os.getpid())
            return Response(200, "application/json", body)
        if path == "/":
            return Response(200, "text/html; charset=utf-8", DASHBOARD)
        return Response(404, "text/plain", b"not found\n")


@attrs.define(eq=False)
class _Client:
    sock: socket.socket
    #: When the whole exchange must be over, and when the request must have arrived.
    deadline: float
    request_deadline: float
    request: bytearray = attrs.Factory(bytearray)
    reply: memoryview | None = None

    def next_deadline(self) -> float:
        return min(self.deadline, self.request_deadline) if self.reply is None else self.deadline


def _encode(response: Response, head_only: bool) -> bytes:
    reason = _REASONS.get(response.status, "")
    head = (
        f"HTTP/1.1 {response.status} {reason}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    return head if head_only else head + response.body


class AdminServer:
    """The listener and its clients, driven by the master's poll (see the module docstring)."""

    def __init__(
        self,
        sock: socket.socket,
        answer: Callable[[str, str], Response],
        clock: Callable[[], float],
        timeout: float,
        *,
        request_timeout: float | None = None,
        max_clients: int = 1024,
    ) -> None:
        if max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, not {max_clients!r}")
        sock.setblocking(False)
        self._sock = sock
        self._answer = answer
        self._clock = clock
        self._timeout = timeout
        self._request_timeout = timeout if request_timeout is None else request_timeout
        self._max_clients = max_clients
        #: In accept order, so the first one still reading is the oldest idle client.
        self._clients: dict[int, _Client] = {}
        self.evicted = 0

    @classmethod
    def bind(
        cls,
        address: Address,
        answer: Callable[[str, str], Response],
        clock: Callable[[], float],
        timeout: float,
        *,
        request_timeout: float | None = None,
        max_clients: int = 1024,
    ) -> AdminServer:
        """Listen on ``address`` (OSError naming it if that fails)."""
        sock = bind_listener(address, 128, reuse_port=False, setting="metrics.listen")
        return cls(
            sock, answer, clock, timeout, request_timeout=request_timeout, max_clients=max_clients
        )

    @property
    def address(self) -> tuple[str, int]:
        name = self._sock.getsockname()
        return name[0], name[1]

    # -- Watcher ----------------------------------------------------------------------------

    def interest(self) -> Mapping[int, int]:
        wanted: dict[int, int] = {}
        if self._sock.fileno() >= 0 and self._has_room():
            wanted[self._sock.fileno()] = select.POLLIN
        for fd, client in self._clients.items():
            wanted[fd] = select.POLLIN if client.reply is None else select.POLLOUT
        return wanted

    def on_ready(self, fd: int, revents: int) -> None:
        if fd == self._sock.fileno():
            self._accept()
            return
        client = self._clients.get(fd)
        if client is None:
            return
        if client.reply is None:
            self._read(fd, client)
        else:
            self._write(fd, client)

    def deadline(self) -> float | None:
        return min((c.next_deadline() for c in self._clients.values()), default=None)

    def on_time(self, now: float) -> None:
        for fd, client in list(self._clients.items()):
            if now >= client.next_deadline():
                self._drop(fd)

    def close(self) -> None:
        for fd in list(self._clients):
            self._drop(fd)
        self._sock.close()

    # -- one client ------------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BURST):
            if not self._has_room():
                return  # every client is being answered: the rest wait in the backlog
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("admin listener: cannot accept: %s", exc)
                return
            sock.setblocking(False)
            if len(self._clients) >= self._max_clients:
                self._evict_oldest_idle()
            now = self._clock()
            client = _Client(sock, now + self._timeout, now + self._request_timeout)
            self._clients[sock.fileno()] = client

    def _has_room(self) -> bool:
        """Below the limit, or some client could be closed for a new one."""
        if len(self._clients) < self._max_clients:
            return True
        return any(client.reply is None for client in self._clients.values())

    def _evict_oldest_idle(self) -> None:
        """Close the longest-waiting client that has not sent a whole request."""
        for fd, client in self._clients.items():
            if client.reply is None:
                self._drop(fd)
                self.evicted += 1
                if self.evicted == 1 or self.evicted % 1000 == 0:
                    log.warning(
                        "admin listener: %d clients open (metrics.admin_max_clients); closed "
                        "the oldest that sent no request (%d so far)",
                        self._max_clients,
                        self.evicted,
                    )
                return

    def _read(self, fd: int, client: _Client) -> None:
        try:
            data = client.sock.recv(MAX_REQUEST + 1 - len(client.request))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        if not data:
            self._drop(fd)
            return
        client.request += data
        end = client.request.find(b"\r\n\r\n")
        if end < 0:
            end = client.request.find(b"\n\n")
        if end < 0:
            if len(client.request) > MAX_REQUEST:
                self._reply(fd, client, Response(431, "text/plain", b"request too large\n"), False)
            return
        line = bytes(client.request.split(b"\n", 1)[0]).decode("latin-1").strip()
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self._reply(fd, client, Response(400, "text/plain", b"bad request\n"), False)
            return
        method, target, _ = parts
        try:
            response = self._answer(method, target)
        except Exception:
            log.exception("admin listener: answering %s %s failed", method, target)
            response = Response(503, "text/plain", b"internal error\n")
        self._reply(fd, client, response, method == "HEAD")

    def _reply(self, fd: int, client: _Client, response: Response, head_only: bool) -> None:
        client.reply = memoryview(_encode(response, head_only))
        self._write(fd, client)

    def _write(self, fd: int, client: _Client) -> None:
        reply = client.reply
        assert reply is not None
        try:
            sent = client.sock.send(reply)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        client.reply = reply = reply[sent:]
        if not reply:
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_WR)
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        client = self._clients.pop(fd, None)
        if client is not None:
            client.sock.close()
