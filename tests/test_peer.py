"""Peer: one value for a client's address, from every way one is named."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioserver.peer import Peer


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (("10.0.0.1", 5000), Peer("10.0.0.1", 5000)),
        (("::ffff:10.0.0.1", 5000, 0, 0), Peer("10.0.0.1", 5000)),
        (("2001:db8::1", 443, 0, 0), Peer("2001:db8::1", 443)),
        (b"/run/app.sock", Peer("/run/app.sock")),
        ("", Peer("unix")),
    ],
)
def test_from_sockaddr(address: object, expected: Peer) -> None:
    assert Peer.from_sockaddr(address) == expected


@pytest.mark.parametrize(
    ("peer", "v4", "v6", "network"),
    [
        (Peer("10.1.2.3", 1), 32, 64, "10.1.2.3/32"),
        (Peer("10.1.2.3", 1), 24, 64, "10.1.2.0/24"),
        (Peer("2001:db8:1:2:3:4:5:6", 1), 32, 64, "2001:db8:1:2::/64"),
        (Peer("2001:db8:1:2:3:4:5:6", 1), 32, 128, "2001:db8:1:2:3:4:5:6/128"),
        (Peer("memory:7"), 32, 64, "memory:7"),
    ],
)
def test_network(peer: Peer, v4: int, v6: int, network: str) -> None:
    assert peer.network(v4, v6) == network


def test_every_host_of_one_v6_64_is_one_network_and_the_next_64_another() -> None:
    a = Peer("2001:db8::1").network()
    assert Peer("2001:db8::ffff:ffff:ffff:ffff").network() == a
    assert Peer("2001:db8:0:1::1").network() != a


def test_an_ipv4_mapped_address_is_the_ipv4_network() -> None:
    assert Peer.parse("[::ffff:192.0.2.9]:80").network(24) == "192.0.2.0/24"


@given(st.ip_addresses(), st.integers(0, 65535))
def test_str_and_parse_round_trip(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    peer = Peer.from_ip(ip, port)
    assert Peer.parse(str(peer)) == peer
    assert ipaddress.ip_address(peer.host) in ipaddress.ip_network(peer.network(), strict=False)


@given(st.ip_addresses(), st.integers(0, 32), st.integers(0, 128))
def test_network_is_the_standard_librarys_network(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, v4: int, v6: int
) -> None:
    peer = Peer.from_ip(ip, 1)
    prefix = v4 if ipaddress.ip_address(peer.host).version == 4 else v6
    expected = ipaddress.ip_network((peer.host, prefix), strict=False)
    assert peer.network(v4, v6) == str(expected)
