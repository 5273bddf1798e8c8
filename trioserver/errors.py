"""One family of protocol errors for every parser: which side is wrong.

As in h11: a :class:`LocalProtocolError` is our own misuse of a parser (a bug in
the server, never the peer's doing); a :class:`RemoteProtocolError` is the peer
breaking the protocol, and the connection it came on cannot go on. Each parser
(the framer, the PROXY header parser, the HTTP parser) raises subclasses of
these, so a caller can tell the two apart without knowing which parser spoke.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base of every protocol error."""


class LocalProtocolError(ProtocolError, ValueError):
    """We asked a parser for something the protocol cannot do (our bug)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; the connection cannot continue."""
