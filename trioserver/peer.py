"""``Peer``: a client's address as one value, for logs, rate limits and the PROXY protocol.

The kernel, a PROXY header and the testing kit each name a client differently
(``("::ffff:10.0.0.1", 5000, 0, 0)``, ``10.0.0.1:5000``, ``memory:3``); a ``Peer``
is made from any of them once, here, so nothing else parses addresses:

- an IPv4-mapped IPv6 address is its IPv4 address (one client is one rate-limit
  key whichever way the socket or the balancer listens);
- ``str(peer)`` is ``host:port``, with brackets for IPv6 (``[2001:db8::1]:5000``),
  or just the name when there is no port (a Unix socket, an in-memory link);
- ``peer.network()`` is the client's network (IPv4 /32 and IPv6 /64 by default),
  the key of every per-client limit: one IPv6 host usually holds a whole /64, so
  keying by its /128 would let it pass as 2**64 clients.
"""

from __future__ import annotations

import functools
import ipaddress
import sys
from typing import Any

import attrs

__all__ = ["IPAddress", "Peer"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@attrs.frozen(slots=True)
class Peer:
    """A client's address: ``host`` (an IP address, or a name) and ``port`` (None if none)."""

    host: str
    port: int | None = None

    @classmethod
    def from_sockaddr(cls, address: Any) -> Peer:
        """The peer a socket's ``getpeername()`` / ``accept()`` address names."""
        if isinstance(address, tuple) and len(address) >= 2:
            host = str(address[0])
            if ":" in host and host.startswith("::ffff:") and "." in host:
                host = host[7:]  # IPv4-mapped: the IPv4 address itself
            # Interned: thousands of connections from a few hosts share one string.
            return cls(sys.intern(host), int(address[1]))
        if isinstance(address, bytes):
            address = address.decode("utf-8", "backslashreplace")
        return cls(str(address) or "unix")

    @classmethod
    def parse(cls, text: str) -> Peer:
        """The peer ``str(peer)`` printed: ``host:port``, ``[v6]:port``, or a bare name."""
        host, sep, port = text.rpartition(":")
        if sep and port.isdigit() and len(port) <= 5:
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            elif ":" in host:  # an IPv6 address without brackets: no port given
                return cls(text)
            if host:
                try:
                    ip = ipaddress.ip_address(host)
                except ValueError:
                    return cls(sys.intern(host), int(port))
                return cls.from_ip(ip, int(port))
        return cls(text)

    @classmethod
    def from_ip(cls, ip: IPAddress, port: int | None) -> Peer:
        """The peer at ``ip`` (an IPv4-mapped IPv6 address becomes IPv4)."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return cls(sys.intern(str(ip)), port)

    @property
    def ip(self) -> IPAddress | None:
        """The host as an IP address, or None when it is a name (``memory:1``, a path)."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def network(self, v4_prefix: int = 32, v6_prefix: int = 64) -> str:
        """The network this peer counts as for limits: ``10.0.0.0/24``, ``2001:db8::/64``.

        A name that is not an IP address (``memory:1``, a Unix socket path) is its
        own network.
        """
        return _network_of(self.host, v4_prefix, v6_prefix)

    def __str__(self) -> str:
        if self.port is None:
            return self.host
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@functools.lru_cache(maxsize=10_000)
def _network_of(host: str, v4_prefix: int, v6_prefix: int) -> str:
    """``host``'s network as text, remembered for the last 10,000 hosts: parsing an
    address costs microseconds, and every limit asks for it on every connection."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host  # a name is its own network
    bits, prefix = (32, v4_prefix) if ip.version == 4 else (128, v6_prefix)
    masked = int(ip) & (((1 << prefix) - 1) << (bits - prefix))
    return f"{type(ip)(masked)}/{prefix}"
