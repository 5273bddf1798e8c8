"""Listening sockets, made one way for the master and for a worker on its own,
and the form a worker accepts from (``BoundListener``).

Every listening socket has SO_REUSEADDR and SO_REUSEPORT: the master binds one
socket per worker slot on the same port, and the kernel spreads new connections
over them (docs/design.md, "Scale"). IPv6 sockets are v6-only, so ``[::]:N`` and
``0.0.0.0:N`` can be listed side by side.

:func:`stop_queueing` is for the final stop: closing a listening socket resets every
connection still in its accept queue (Linux), and ``shutdown`` on it does the same,
so the queue is closed to new handshakes first and emptied by accept.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Any, Final

import attrs
import trio

from .config import Address

__all__ = [
    "BoundListener",
    "Listener",
    "addresses_of",
    "bind_listener",
    "open_listeners",
    "stop_queueing",
]

#: SO_ATTACH_FILTER (Linux; the standard library does not name it).
_SO_ATTACH_FILTER: Final = 26
#: A classic BPF socket filter, run on the TCP header of each segment that reaches the
#: listening socket: keep a segment with ACK set (the end of a handshake already under
#: way), drop the rest (a new SYN, which the client retries and then finds refused).
_KEEP_ACKS: Final = (
    (0x30, 0, 0, 13),  # ldb [13]         the TCP flags byte
    (0x45, 1, 0, 0x10),  # jset #ACK, keep
    (0x06, 0, 0, 0),  # ret #0            drop
    (0x06, 0, 0, 0xFFFFFFFF),  # keep:  ret #-1 (the whole segment)
)


def bind_listener(
    address: Address, backlog: int, *, reuse_port: bool = True, setting: str | None = None
) -> socket.socket:
    """One non-blocking listening socket; OSError names the address (and ``setting``).

    ``reuse_port=False`` is for a listener only one process may hold (the
    master's admin port): a second server then fails to bind instead of sharing.
    """
    infos = socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        where = f"{address} ({setting})" if setting else str(address)
        raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


@attrs.frozen(eq=False)
class BoundListener:
    """A listening socket both as trio sees it and as the standard library does.

    The worker accepts on ``sock`` directly (one non-blocking ``accept`` and a
    wait only when nothing is pending), which hands it each connection's own
    standard socket for the socket transport; ``listener`` is the same socket as
    a ``trio.SocketListener`` for everything else.
    """

    listener: trio.SocketListener
    sock: socket.socket


async def open_listeners(addresses: Sequence[Address], backlog: int) -> list[BoundListener]:
    """Bind each address with SO_REUSEADDR and SO_REUSEPORT (see :func:`bind_listener`)."""
    bound: list[BoundListener] = []
    try:
        for address in addresses:
            sock = bind_listener(address, backlog)
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            bound.append(BoundListener(listener, sock))
    except BaseException:
        for b in bound:
            b.sock.close()
        raise
    return bound


Listener = trio.abc.Listener[Any] | BoundListener


def addresses_of(listeners: Sequence[Listener]) -> list[tuple[str, int]]:
    """The (host, port) each bound listener listens on (in-memory listeners have none)."""
    out = []
    for listener in listeners:
        if isinstance(listener, BoundListener):
            name = listener.sock.getsockname()
            out.append((name[0], name[1]))
    return out


def stop_queueing(sock: socket.socket) -> bool:
    """Make the listening ``sock`` start no new handshake; what is queued stays acceptable.

    For every process holding the socket at once (a filter belongs to the socket, not
    the fd). Handshakes already under way still complete and queue. False where this
    cannot be done (not Linux): the socket then queues on until it closes.
    """
    if not sys.platform.startswith("linux"):
        return False
    code = b"".join(struct.pack("HBBI", *insn) for insn in _KEEP_ACKS)
    program = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HP", len(_KEEP_ACKS), ctypes.addressof(program))
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError:
        return False
    return True
