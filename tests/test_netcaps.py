"""Per-network connection caps, pure: keys, the cap, and counts that always balance."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioserver.netcaps import NetworkCaps, NetworkCapsStatistics
from trioserver.peer import Peer

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def test_an_ipv4_address_is_its_own_network_and_mapped_ipv4_is_the_same() -> None:
    caps = NetworkCaps(2)
    assert caps.key(Peer.parse("10.0.0.1:5000")) == "10.0.0.1/32"
    assert caps.key(Peer.from_sockaddr(("::ffff:10.0.0.1", 5001, 0, 0))) == "10.0.0.1/32"
    assert caps.key(Peer.parse("10.0.0.2:5000")) == "10.0.0.2/32"


def test_ipv6_addresses_of_one_slash_64_share_a_key() -> None:
    caps = NetworkCaps(2)
    one = caps.key(Peer.parse("[2001:db8:1:2::1]:5000"))
    other = caps.key(Peer.parse("[2001:db8:1:2:ffff::9]:5000"))
    assert one == other == "2001:db8:1:2::/64"
    assert caps.key(Peer.parse("[2001:db8:1:3::1]:5000")) == "2001:db8:1:3::/64"


def test_exempt_networks_and_a_zero_limit_count_nothing() -> None:
    caps = NetworkCaps(2, LOOPBACK)
    assert caps.key(Peer.parse("127.0.0.1:5000")) is None
    assert caps.key(Peer.parse("[::1]:5000")) is None
    assert caps.key(Peer("memory:3")) == "memory:3"  # a name is its own network
    off = NetworkCaps(0)
    assert not off.enabled
    assert off.key(Peer.parse("10.0.0.1:1")) is None


def test_the_cap_refuses_one_more_and_a_release_makes_room() -> None:
    caps = NetworkCaps(2)
    key = "10.0.0.1/32"
    assert caps.admit(key) and caps.admit(key)
    assert not caps.admit(key)
    assert caps.admit("10.0.0.2/32")  # another network has its own count
    assert caps.statistics() == NetworkCapsStatistics(networks=2, held=3)
    caps.release(key)
    assert caps.admit(key)
    assert caps.count(Peer.parse("10.0.0.1:9")) == 2


def test_a_network_with_nothing_open_keeps_no_entry() -> None:
    caps = NetworkCaps(5)
    caps.admit("10.0.0.1/32")
    caps.release("10.0.0.1/32")
    assert caps.open == {}
    assert caps.statistics() == NetworkCapsStatistics(0, 0)
    with pytest.raises(KeyError):
        caps.release("10.0.0.1/32")  # more releases than admissions is a bug, loudly


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="-1"):
        NetworkCaps(-1)


@given(
    limit=st.integers(1, 4),
    steps=st.lists(st.tuples(st.booleans(), st.integers(0, 3)), max_size=200),
)
def test_any_opens_and_closes_balance_exactly(limit: int, steps: list[tuple[bool, int]]) -> None:
    """Against a model: per network, open count never passes the limit, and closing
    everything that was admitted leaves nothing counted."""
    caps = NetworkCaps(limit)
    admitted: list[str] = []
    model: dict[str, int] = {}
    for opening, network in steps:
        key = f"10.0.0.{network}/32"
        if opening:
            ok = caps.admit(key)
            assert ok == (model.get(key, 0) < limit)
            if ok:
                admitted.append(key)
                model[key] = model.get(key, 0) + 1
        elif key in admitted:
            admitted.remove(key)
            caps.release(key)
            model[key] -= 1
            if not model[key]:
                del model[key]
        assert caps.open == model
        assert caps.held == len(admitted)
    for key in admitted:
        caps.release(key)
    assert caps.open == {} and caps.held == 0


@given(st.ip_addresses())
def test_the_key_is_the_peers_network(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    peer = Peer.from_ip(ip, 1)
    caps = NetworkCaps(1)
    assert caps.key(peer) == peer.network()
    assert caps.key(peer) == peer.network()  # remembered, the same


def test_the_remembered_keys_are_bounded_and_stay_right() -> None:
    caps = NetworkCaps(1, LOOPBACK)
    peers = [Peer(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1) for i in range(25_000)]
    for peer in peers:
        assert caps.key(peer) == peer.network()
    assert len(caps._keys) <= 10_000
    assert caps.key(Peer("127.0.0.1", 1)) is None
    assert caps.key(peers[0]) == "10.0.0.0/32"
