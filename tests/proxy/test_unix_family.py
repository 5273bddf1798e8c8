"""PROXY v2 headers for UNIX-socket clients: never a client identity of the sender's choosing."""

from __future__ import annotations

import ipaddress

import pytest

from trioserver.config import load_config
from trioserver.peer import Peer
from trioserver.proxy_protocol import (
    MalformedProxyHeader,
    ProxyFamily,
    ProxyPolicy,
    RefusedProxyFamily,
    parse_proxy_header,
    read_proxy_header,
)

from .headers import v2_header

BALANCER = Peer("127.0.0.1", 40000)
EMPTY = bytes(216)  # an unbound client socket and an unnamed one: both paths empty
PATHS = b"/run/c.sock".ljust(108, b"\0") + b"/run/s.sock".ljust(108, b"\0")


def policy(unix: str = "balancer") -> ProxyPolicy:
    return ProxyPolicy(frozenset((2,)), (ipaddress.ip_network("127.0.0.0/8"),), unix=unix)


async def read(data: bytes, unix: str = "balancer") -> tuple[Peer, bytes]:
    chunks = [data, b""]

    async def receive() -> bytes:
        return chunks.pop(0)

    return await read_proxy_header(receive, policy(unix), BALANCER)


@pytest.mark.parametrize("addresses", [EMPTY, PATHS], ids=["empty", "paths"])
@pytest.mark.parametrize("transport", [0x31, 0x32], ids=["stream", "dgram"])
async def test_a_unix_client_is_keyed_as_the_balancer(addresses: bytes, transport: int) -> None:
    header, _ = parse_proxy_header(v2_header(0x21, transport, addresses))
    assert header.family is ProxyFamily.UNIX and header.peer is None
    assert await read(v2_header(0x21, transport, addresses) + b"hello") == (BALANCER, b"hello")


async def test_unix_clients_can_be_refused() -> None:
    with pytest.raises(RefusedProxyFamily, match=r"server.proxy_unix = 'refuse'"):
        await read(v2_header(0x21, 0x31, EMPTY), unix="refuse")
    # A LOCAL header (the balancer's health check) is not a client: still accepted.
    assert await read(v2_header(0x20, 0x31, EMPTY), unix="refuse") == (BALANCER, b"")


@pytest.mark.parametrize("length", [0, 1, 108, 215])
def test_a_unix_header_without_its_whole_address_block_is_malformed(length: int) -> None:
    with pytest.raises(MalformedProxyHeader, match="needs 216"):
        parse_proxy_header(v2_header(0x21, 0x31, bytes(length)))


def test_the_setting() -> None:
    server = load_config(None, ('server.proxy_protocol="v2"', 'server.proxy_unix="refuse"')).server
    found = ProxyPolicy.from_settings(server)
    assert found is not None and found.unix == "refuse"
    assert load_config(None, ()).server.proxy_unix == "balancer"
