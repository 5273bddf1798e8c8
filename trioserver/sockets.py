"""Listening sockets, made one way for the master and for a worker on its own.

Every listening socket has SO_REUSEADDR and SO_REUSEPORT: the master binds one
socket per worker slot on the same port, and the kernel spreads new connections
over them (docs/design.md, "Scale"). IPv6 sockets are v6-only, so ``[::]:N`` and
``0.0.0.0:N`` can be listed side by side.
"""

from __future__ import annotations

import socket

from .config import Address

__all__ = ["bind_listener"]


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
