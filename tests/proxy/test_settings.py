"""The PROXY settings: parsed once in config.py, turned into a policy the worker uses."""

from __future__ import annotations

import ipaddress

import pytest

from trioserver.config import ConfigError, describe_settings, load_config
from trioserver.peer import Peer
from trioserver.proxy_protocol import MODES, ProxyPolicy


def test_defaults_are_off_and_loopback() -> None:
    server = load_config().server
    assert server.proxy_protocol == "off"
    assert ProxyPolicy.from_settings(server) is None
    assert [str(n) for n in server.proxy_trusted] == ["127.0.0.1/32", "::1/128"]
    assert server.proxy_timeout == 5.0


def test_overrides_build_the_policy() -> None:
    server = load_config(
        None,
        (
            'server.proxy_protocol="v2"',
            'server.proxy_trusted=["10.0.0.0/8", "2001:db8::/32"]',
            "server.proxy_timeout=1.5",
        ),
    ).server
    policy = ProxyPolicy.from_settings(server)
    assert policy is not None
    assert policy.versions == {2}
    assert policy.timeout == 1.5
    assert policy.trusted == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('server.proxy_protocol="v3"', "not one of"),
        ('server.proxy_trusted=["10.0.0.5/8"]', "host bits set"),
        ('server.proxy_trusted=["balancer.example"]', "is not a network"),
        ("server.proxy_trusted=[1]", "expected a string"),
        ("server.proxy_timeout=0", "must be > 0.0"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(None, (override,))
    assert "[server] proxy_" in str(caught.value)


def test_modes_match_the_setting_choices() -> None:
    assert set(MODES) == {"off", "v1", "v2", "any"}
    text = describe_settings()
    assert 'proxy_protocol = "off"' in text
    assert 'proxy_trusted = ["127.0.0.1/32", "::1/128"]' in text


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("127.0.0.1:5000", True),
        ("[::1]:5000", True),
        ("[::ffff:127.0.0.1]:5000", True),  # a dual-stack socket's view of an IPv4 peer
        ("127.0.0.2:5000", False),
        ("10.0.0.1:5000", False),
        ("memory:3", False),
        ("unix", False),
        ("", False),
    ],
)
def test_trust_is_by_the_socket_peer_address(peer: str, trusted: bool) -> None:
    policy = ProxyPolicy.from_settings(load_config(None, ('server.proxy_protocol="any"',)).server)
    assert policy is not None
    assert policy.trusts(Peer.parse(peer)) is trusted
