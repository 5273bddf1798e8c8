"""Why a connection was closed or a packet dropped: one table, one counter key each.

Every kick and every drop is counted under its reason's ``value`` (the label the
statistics and metrics use) and logged with the reason's text, once per kick and
once per connection and drop reason (a hostile client cannot flood the log).
"""

from __future__ import annotations

import enum

__all__ = ["CloseReason", "DropReason", "HandoffKept", "KickReason", "TlsFailure"]


class KickReason(enum.Enum):
    """Why the server closed a connection; ``str(reason)`` is the log text."""

    BAD_LENGTH = "bad_length"
    TRUNCATED = "truncated"
    HEARTBEAT = "heartbeat"
    LIFETIME = "lifetime"
    LOGIN_TIMEOUT = "login_timeout"
    FLOOD = "flood"
    SEND_QUEUE = "send_queue"
    SEND_BYTES = "send_bytes"
    HANDLER_ERROR = "handler_error"
    APPLICATION = "application"
    DRAIN_TIMEOUT = "drain_timeout"
    WEBSOCKET = "websocket"
    WEBSOCKET_TOO_BIG = "websocket_too_big"

    def __str__(self) -> str:
        return _KICK_TEXT[self]


_KICK_TEXT = {
    KickReason.BAD_LENGTH: "sent a header whose pkgLen is out of range",
    KickReason.TRUNCATED: "closed its side in the middle of a packet",
    KickReason.HEARTBEAT: "sent no ping within the heartbeat deadline",
    KickReason.LIFETIME: "reached the hard session lifetime",
    KickReason.LOGIN_TIMEOUT: "did not log in within connection.login_timeout",
    KickReason.FLOOD: "sent packets faster than the flood rule allows",
    KickReason.SEND_QUEUE: "let too many replies wait unread (max_pending_replies)",
    KickReason.SEND_BYTES: "let too many reply bytes wait unread (max_pending_bytes)",
    KickReason.HANDLER_ERROR: "made a handler raise (a bug, logged with its traceback)",
    KickReason.APPLICATION: "was kicked by an application handler",
    KickReason.DRAIN_TIMEOUT: "was still open when the worker's drain timeout ran out",
    KickReason.WEBSOCKET: "broke the WebSocket protocol (a bad or unmasked frame, a text "
    "message, a bad close)",
    KickReason.WEBSOCKET_TOO_BIG: "sent a WebSocket message over http.websocket_max_message",
}


class CloseReason(enum.Enum):
    """Why a connection ended when it was not the server's kick (not counted as one)."""

    PEER_GONE = "peer_gone"
    DRAINED = "drained"
    PROXY_REFUSED = "proxy_refused"
    NETWORK_CAP = "network_cap"
    TLS_FAILED = "tls_failed"
    HANDED_OFF = "handed_off"

    def __str__(self) -> str:
        return _CLOSE_TEXT[self]


_CLOSE_TEXT = {
    CloseReason.PEER_GONE: "reset the connection or went away",
    CloseReason.DRAINED: "was closed by the worker's drain while it waited idle",
    CloseReason.PROXY_REFUSED: "sent no valid PROXY header (counted as proxy_refused)",
    CloseReason.NETWORK_CAP: "came from a network at server.max_connections_per_network "
    "(counted as network_cap)",
    CloseReason.TLS_FAILED: "did not complete its TLS handshake (counted by reason)",
    CloseReason.HANDED_OFF: "was handed to a new worker on a reload, its ctx.state not "
    "picklable (on_connect runs again there)",
}


class DropReason(enum.Enum):
    """Why a packet was dropped without a reply while its connection stays open."""

    BAD_CRC = "bad_crc"
    CRC_ON_EMPTY_BODY = "crc_on_empty_body"
    UNKNOWN_CODE = "unknown_code"
    BAD_BODY_SIZE = "bad_body_size"
    STALE = "stale"

    def __str__(self) -> str:
        return _DROP_TEXT[self]


_DROP_TEXT = {
    DropReason.BAD_CRC: "a packet whose CRC does not match its body",
    DropReason.CRC_ON_EMPTY_BODY: "an empty-bodied packet with a nonzero CRC",
    DropReason.UNKNOWN_CODE: "a packet with a message code no handler serves",
    DropReason.BAD_BODY_SIZE: "a packet whose body size is wrong for its message code",
    DropReason.STALE: "a packet whose connection closed before a handler reached it",
}


class TlsFailure(enum.Enum):
    """Why a TLS handshake did not complete; ``value`` is the counter label."""

    TIMEOUT = "timeout"
    NOT_TLS = "not_tls"
    CLIENT_CERTIFICATE = "client_certificate"
    PEER_ALERT = "peer_alert"
    VERSION = "version"
    PEER_GONE = "peer_gone"
    PROTOCOL = "protocol"

    def __str__(self) -> str:
        return _FAILURE_TEXT[self]


_FAILURE_TEXT = {
    TlsFailure.TIMEOUT: "did not complete the TLS handshake in time (tls.handshake_timeout)",
    TlsFailure.NOT_TLS: "sent something other than TLS (plaintext on a TLS port?)",
    TlsFailure.CLIENT_CERTIFICATE: "presented no client certificate, or one tls.client_ca "
    "does not vouch for",
    TlsFailure.PEER_ALERT: "aborted the handshake with an alert (often: it does not trust "
    "the server's certificate; is the chain complete?)",
    TlsFailure.VERSION: "offered no TLS version the server accepts (tls.minimum_version)",
    TlsFailure.PEER_GONE: "closed or reset the connection during the handshake",
    TlsFailure.PROTOCOL: "broke the TLS handshake protocol",
}


class HandoffKept(enum.Enum):
    """Why a reload's handoff left a connection with the old worker, which drains it."""

    TLS = "tls"
    HTTP = "http"
    NEW = "new"
    WEBSOCKET = "websocket"
    CLOSING = "closing"
    FINISHING = "finishing"
    CLOSED = "closed"
    TOO_BIG = "too_big"
    REFUSED = "refused"
    TRANSPORT = "transport"

    def __str__(self) -> str:
        return _KEPT_TEXT[self]


_KEPT_TEXT = {
    HandoffKept.TLS: "is TLS: its session lives in this process's ssl object",
    HandoffKept.HTTP: "is an HTTP connection (a request in progress, or idle keep-alive)",
    HandoffKept.NEW: "was still to send its PROXY header or to finish on_connect",
    HandoffKept.WEBSOCKET: "is a WebSocket off the fast path (wsproto parses it, or a frame "
    "is half sent)",
    HandoffKept.CLOSING: "was already closing",
    HandoffKept.FINISHING: "ended its reading while stopping (EOF, a rule)",
    HandoffKept.CLOSED: "closed while stopping (a kick, a reset, a deadline)",
    HandoffKept.TOO_BIG: "had more queued or carried than one handoff message holds",
    HandoffKept.REFUSED: "was refused by the new worker (its pool or the network cap full)",
    HandoffKept.TRANSPORT: "runs over a transport that cannot move (an in-memory link)",
}
