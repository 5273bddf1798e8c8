"""Per-client-network connection caps: how many connections one network holds at once.

::

    caps = NetworkCaps(limit=1000, exempt=(ip_network("127.0.0.0/8"),))
    key = caps.key(peer)            # None: not counted (exempt, or no cap)
    if key is not None and not caps.admit(key):
        ...                         # refused: its network holds ``limit`` connections
    ...
    caps.release(key)               # exactly once per admitted connection

One worker's pool is shared by its binary, TLS, HTTP and WebSocket connections,
so without a cap a single host could hold every slot with idle connections (the
way nginx's ``limit_conn`` zones prevent it). The key is ``Peer.network()``: an
IPv4 address, or an IPv6 /64, which one host usually owns whole.

A cap counts only what it can name. The address of a balancer that speaks for
many clients (an exempt network, loopback by default) is not counted. Behind a
PROXY header the client's address is known only once the header is read, so the
worker admits such a connection after the header (the balancer's own address is
never the key); what bounds header-less connections there is ``proxy_trusted``
and ``proxy_timeout``.

Pure: no trio, no sockets. The worker calls :meth:`admit` and :meth:`release`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import attrs

from .peer import Peer

__all__ = ["NetworkCaps", "NetworkCapsStatistics"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Hosts whose keys :meth:`NetworkCaps.key` remembers (about 150 bytes each).
_KEYS_KEPT = 10_000


@attrs.frozen
class NetworkCapsStatistics:
    """The caps at one instant: networks counted and the connections they hold."""

    networks: int
    held: int


class NetworkCaps:
    """Open connections by client network, each network at most ``limit`` (0: no cap)."""

    __slots__ = ("_exempt", "_keys", "held", "limit", "open")

    def __init__(self, limit: int, exempt: Iterable[Network] = ()) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
        self.limit = limit
        self._exempt = tuple(exempt)
        #: Open connections by network key; a network with none has no entry.
        self.open: dict[str, int] = {}
        #: Connections counted in ``open`` (their sum).
        self.held = 0
        #: Each recent host's key (None: not counted): parsing an address costs ~20 µs,
        #: far more than the count. Emptied when it reaches ``_KEYS_KEPT`` hosts.
        self._keys: dict[str, str | None] = {}

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def key(self, peer: Peer) -> str | None:
        """The network ``peer`` counts under, or None when it is not counted (exempt, off)."""
        if self.limit <= 0:
            return None
        host = peer.host
        try:
            return self._keys[host]
        except KeyError:
            pass
        if len(self._keys) >= _KEYS_KEPT:
            self._keys.clear()
        key = self._keys[host] = self._key(peer)
        return key

    def _key(self, peer: Peer) -> str | None:
        """``peer.network()`` unless the peer is in an exempt network."""
        ip = peer.ip
        if ip is not None and any(ip in network for network in self._exempt):
            return None
        return peer.network()

    def admit(self, key: str) -> bool:
        """Count one new connection of network ``key`` (from :meth:`key`); False: the
        network is at its cap, the connection is to be refused, nothing to release."""
        count = self.open.get(key, 0)
        if count >= self.limit:
            return False
        self.open[key] = count + 1
        self.held += 1
        return True

    def release(self, key: str) -> None:
        """One connection :meth:`admit` admitted under ``key`` closed."""
        count = self.open[key] - 1  # KeyError: released more often than admitted (a bug)
        if count:
            self.open[key] = count
        else:
            del self.open[key]
        self.held -= 1

    def count(self, peer: Peer) -> int:
        """How many open connections ``peer``'s network holds (0 if it is not counted)."""
        key = self.key(peer)
        return 0 if key is None else self.open.get(key, 0)

    def statistics(self) -> NetworkCapsStatistics:
        return NetworkCapsStatistics(len(self.open), self.held)
