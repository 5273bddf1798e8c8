"""The WebSocket opening handshake (RFC 6455 §4.2) as a rule on parsed requests. No trio.

::

    policy = WebSocketPolicy.from_settings(config.http)   # None: WebSocket is off
    if policy is not None and policy.wants(request):
        decision = policy.decide(request)     # Accepted(response) or Refused(status, ...)

Only the request to ``http.websocket_path`` is the policy's; every other target
stays the static site's. The checks, in order, each with the status that refuses it:

==========================================================  ======  =======================
the request                                                 status  RFC 6455
==========================================================  ======  =======================
a method other than GET                                     405     §4.1 (a GET)
HTTP/1.0                                                    400     §4.1 (HTTP/1.1 or later)
no ``Upgrade: websocket`` or no ``Connection: upgrade``     426     §4.2.1 items 3, 4
``Sec-WebSocket-Version`` other than 13                     426     §4.2.2 (with the
                                                                    version we speak)
``Sec-WebSocket-Key`` missing or not 16 bytes in base64     400     §4.2.1 item 5
an ``Origin`` the allow-list does not name                  403     §4.2.2 (``Origin``)
subprotocols offered, ``trioserver.v1`` not among them      400     §4.2.2 (subprotocol)
==========================================================  ======  =======================

The ``Origin`` rule is what protects a logged-in browser from another site's script
opening a WebSocket in its name (cross-site WebSocket hijacking): by default only a
page served by the same host and port may connect (``Origin`` names the same
``host:port`` as ``Host``); ``http.websocket_origins`` names others, ``*`` allows any.
A client that sends no ``Origin`` is no browser, and is not held to it.

No extension is negotiated (permessage-deflate would cost CPU on every message to
save bytes on packets that are mostly small and binary), and the subprotocol is
echoed only when the client asked for it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import attrs

from .parser import Request
from .paths import split_target

if TYPE_CHECKING:
    from trioserver.config import HttpSettings

__all__ = ["SUBPROTOCOL", "Accepted", "Refused", "WebSocketPolicy", "accept_token"]

#: The subprotocol name: the 8-byte-header packets of docs/protocol.md, in binary messages.
SUBPROTOCOL: Final = "trioserver.v1"
#: RFC 6455 §1.3: appended to the client's key before hashing.
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_VERSION: Final = b"13"
_DEFAULT_PORTS: Final = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


@attrs.frozen
class Accepted:
    """The handshake is good: send ``response`` (the 101 head), then speak WebSocket."""

    response: bytes
    subprotocol: str | None


@attrs.frozen
class Refused:
    """The handshake is refused: answer ``status`` with ``headers`` added, then close."""

    status: int
    detail: str
    headers: bytes = b""


def accept_token(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def _tokens(value: bytes | None) -> list[bytes]:
    """The comma-separated tokens of a header field, stripped and lower-cased."""
    if not value:
        return []
    return [token.strip().lower() for token in value.split(b",") if token.strip()]


@attrs.frozen
class WebSocketPolicy:
    """Which request is the WebSocket handshake, and what it must carry."""

    #: The request path that upgrades (``http.websocket_path``).
    path: bytes
    #: Origins allowed besides the same host (lower-case ``scheme://host[:port]``);
    #: ``*`` among them allows any.
    origins: frozenset[str] = frozenset()
    #: Most payload bytes in one message (``http.websocket_max_message``).
    max_message: int = 262144

    @classmethod
    def from_settings(cls, settings: HttpSettings) -> WebSocketPolicy | None:
        """The policy ``[http]`` describes; None when ``websocket_path`` is empty."""
        if not settings.websocket_path:
            return None
        return cls(
            settings.websocket_path.encode(),
            _normalized(settings.websocket_origins),
            settings.websocket_max_message,
        )

    def wants(self, request: Request) -> bool:
        """True when ``request`` is for the WebSocket path (whatever else it carries)."""
        split = split_target(request.target)
        return split is not None and split[0] == self.path

    def decide(self, request: Request) -> Accepted | Refused:
        """Accept or refuse a request for the WebSocket path (the table above)."""
        headers = request.headers
        if request.method != b"GET":
            return Refused(405, "a WebSocket handshake is a GET", b"Allow: GET\r\n")
        if request.version != b"1.1":
            return Refused(400, "a WebSocket handshake needs HTTP/1.1")
        upgrade_headers = b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        if b"websocket" not in _tokens(headers.get(b"upgrade")) or b"upgrade" not in _tokens(
            headers.get(b"connection")
        ):
            return Refused(426, "this address speaks WebSocket only", upgrade_headers)
        if headers.get(b"sec-websocket-version", b"").strip() != _VERSION:
            return Refused(426, "only WebSocket version 13 is spoken", upgrade_headers)
        key = headers.get(b"sec-websocket-key", b"").strip()
        try:
            valid_key = len(base64.b64decode(key, validate=True)) == 16
        except (binascii.Error, ValueError):
            valid_key = False
        if not valid_key:
            return Refused(400, "Sec-WebSocket-Key is missing or is not 16 bytes in base64")
        origin = headers.get(b"origin")
        if origin is not None and not self._origin_allowed(origin, headers.get(b"host", b"")):
            return Refused(403, f"origin {origin.decode('latin-1')!r} is not allowed")
        offered = _tokens(headers.get(b"sec-websocket-protocol"))
        subprotocol = None
        if offered:
            if SUBPROTOCOL.encode() not in offered:
                return Refused(400, f"no subprotocol offered is {SUBPROTOCOL!r}")
            subprotocol = SUBPROTOCOL
        response = b"".join(
            (
                b"HTTP/1.1 101 Switching Protocols\r\n",
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
                b"Sec-WebSocket-Accept: ",
                accept_token(key),
                b"\r\n",
                b"Sec-WebSocket-Protocol: trioserver.v1\r\n" if subprotocol else b"",
                b"Server: trioserver\r\n\r\n",
            )
        )
        return Accepted(response, subprotocol)

    def _origin_allowed(self, origin: bytes, host: bytes) -> bool:
        text = origin.decode("latin-1").strip().lower()
        if "*" in self.origins or text in self.origins:
            return True
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            return False
        if not parts.hostname:
            return False
        default = _DEFAULT_PORTS.get(parts.scheme)
        netloc = parts.netloc.rpartition("@")[2]
        if port is not None and str(port) == default:
            netloc = netloc.rpartition(":")[0]
        own = host.decode("latin-1").strip().lower()
        if default is not None and own.endswith(":" + default):
            own = own[: -len(default) - 1]
        return netloc == own


def _normalized(origins: Iterable[str]) -> frozenset[str]:
    return frozenset(origin.strip().rstrip("/").lower() for origin in origins)
