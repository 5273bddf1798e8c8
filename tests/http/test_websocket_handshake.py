"""The WebSocket handshake rules (trioserver.http.websocket) on parsed requests, no sockets."""

from __future__ import annotations

import pytest

from trioserver.config import Config
from trioserver.http.parser import HttpConnection, Request
from trioserver.http.websocket import Accepted, Refused, WebSocketPolicy, accept_token

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example


def handshake(**fields: bytes | None) -> Request:
    headers = {
        b"host": b"game.example:8080",
        b"upgrade": b"websocket",
        b"connection": b"keep-alive, Upgrade",
        b"sec-websocket-key": KEY,
        b"sec-websocket-version": b"13",
    }
    for name, value in fields.items():
        key = name.replace("_", "-").encode()
        if value is None:
            headers.pop(key, None)
        else:
            headers[key] = value
    method = headers.pop(b"method", b"GET")
    version = headers.pop(b"version", b"1.1")
    return Request(method, b"/ws", version, headers, False, upgrade=True)


POLICY = WebSocketPolicy(b"/ws")


def test_the_rfc_example_key() -> None:
    assert accept_token(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_a_good_handshake_is_switched_with_the_subprotocol_it_asked_for() -> None:
    decision = POLICY.decide(handshake(sec_websocket_protocol=b"other, trioserver.v1"))
    assert isinstance(decision, Accepted)
    assert decision.subprotocol == "trioserver.v1"
    head = decision.response
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
    assert b"\r\nSec-WebSocket-Protocol: trioserver.v1\r\n" in head
    assert head.endswith(b"\r\n\r\n")


def test_no_subprotocol_asked_none_named() -> None:
    decision = POLICY.decide(handshake())
    assert isinstance(decision, Accepted) and decision.subprotocol is None
    assert b"Sec-WebSocket-Protocol" not in decision.response


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"sec_websocket_key": None}, 400),
        ({"sec_websocket_key": b"c2hvcnQ="}, 400),  # 5 bytes, not 16
        ({"sec_websocket_key": b"not base64!!"}, 400),
        ({"sec_websocket_version": b"8"}, 426),
        ({"sec_websocket_version": None}, 426),
        ({"upgrade": None}, 426),
        ({"connection": b"keep-alive"}, 426),
        ({"origin": b"https://evil.example"}, 403),
        ({"origin": b"http://game.example:9090"}, 403),  # another port is another origin
        ({"origin": b"null"}, 403),
        ({"sec_websocket_protocol": b"chat.v2"}, 400),
        ({"method": b"POST"}, 405),
        ({"version": b"1.0"}, 400),
    ],
)
def test_bad_handshakes_are_refused_with_the_right_status(
    fields: dict[str, bytes | None], status: int
) -> None:
    decision = POLICY.decide(handshake(**fields))
    assert isinstance(decision, Refused)
    assert decision.status == status, decision
    if status == 426:
        assert b"Sec-WebSocket-Version: 13\r\n" in decision.headers


@pytest.mark.parametrize(
    ("origins", "origin", "host", "allowed"),
    [
        ((), b"http://game.example:8080", b"game.example:8080", True),
        ((), b"http://GAME.example:8080", b"game.example:8080", True),
        ((), b"http://game.example", b"game.example:80", True),
        ((), b"https://game.example:443", b"game.example", True),
        ((), b"http://game.example", b"game.example:8080", False),
        (("https://app.example",), b"https://app.example", b"game.example:8080", True),
        (("https://app.example",), b"https://other.example", b"game.example:8080", False),
        (("*",), b"https://anything.example", b"game.example:8080", True),
    ],
)
def test_the_origin_rule(
    origins: tuple[str, ...], origin: bytes, host: bytes, allowed: bool
) -> None:
    policy = WebSocketPolicy(b"/ws", frozenset(origins))
    decision = policy.decide(handshake(origin=origin, host=host))
    assert isinstance(decision, Accepted) is allowed


def test_no_origin_is_no_browser_and_passes() -> None:
    assert isinstance(POLICY.decide(handshake(origin=None)), Accepted)


def test_only_the_websocket_path_is_wanted() -> None:
    assert POLICY.wants(handshake())
    assert POLICY.wants(Request(b"GET", b"/ws?token=1", b"1.1", {}, True))
    assert not POLICY.wants(Request(b"GET", b"/ws/other", b"1.1", {}, True))
    assert not POLICY.wants(Request(b"GET", b"/wsx", b"1.1", {}, True))


def test_settings_make_the_policy_and_an_empty_path_turns_it_off() -> None:
    config = Config().replace(
        http__websocket_origins=("https://App.example/",), http__websocket_max_message=1000
    )
    policy = WebSocketPolicy.from_settings(config.http)
    assert policy == WebSocketPolicy(b"/ws", frozenset({"https://app.example"}), 1000)
    assert WebSocketPolicy.from_settings(Config().replace(http__websocket_path="").http) is None
    with pytest.raises(ValueError, match="path"):
        Config().replace(http__websocket_path="ws")
    with pytest.raises(ValueError, match="origin"):
        Config().replace(http__websocket_origins=("app.example",))


def test_the_parser_keeps_the_bytes_after_an_upgrade_request() -> None:
    parser = HttpConnection()
    head = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    frame = b"\x82\x80abcd"
    (request,) = parser.receive_events(head + frame)
    assert isinstance(request, Request) and request.upgrade and not request.keep_alive
    assert parser.trailing_data == frame and parser.finished
