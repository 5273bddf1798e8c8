"""The hub with a real master and two workers: the chat example across worker processes."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_app import PID
from real_server import Server, wait_for

from examples import chat
from tests.hub.redisserver import RedisServer, RedisUnavailable
from trioserver.client import BlockingClient
from trioserver.framer import Packet
from trioserver.messages import encode_login, encode_register

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

ARGS = [
    "--listen",
    "127.0.0.1:0",
    "--workers",
    "2",
    "--app",
    "hub_app:router",
    "--set",
    'accounts.hash="insecure-fast"',
    "--set",
    "connection.flood_check=false",
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path, ARGS)
    try:
        yield server.start()
    finally:
        server.kill_all()


def login(port: int, name: str) -> tuple[BlockingClient, int]:
    client = BlockingClient.connect("127.0.0.1", port)
    client.send_raw(encode_register(name, "pw"))
    client.receive_packet()
    client.send_raw(encode_login(name, "pw"))
    assert client.receive_packet().code == 6
    pid = int(client.request(PID).body)
    return client, pid


def chat_across_workers(port: int, workers: set[int]) -> None:
    """Users on both workers: WHO lists both, SAY and TELL cross between the processes."""
    by_worker: dict[int, list[BlockingClient]] = {}
    opened = []
    try:
        for i in range(200):  # the kernel spreads connections: until both workers have one
            client, pid = login(port, f"user{i}")
            opened.append(client)
            by_worker.setdefault(pid, []).append(client)
            if len(by_worker) == 2:
                break
        assert set(by_worker) == workers
        (a, *_), (b, *_) = by_worker.values()
        a_name, b_name = (f"user{opened.index(c)}".encode() for c in (a, b))
        for client in (a, b):
            assert client.request(chat.JOIN, b"lobby") == Packet(100, b"\0")
        both = sorted([a_name, b_name])
        wait_for(
            "WHO to list the members on both workers",
            lambda: a.request(chat.WHO, b"lobby").body.split(b"\0") == both or None,
            10,
        )
        a.send(chat.SAY, b"lobby\0across")
        heard = Packet(103, b"lobby\0" + a_name + b"\0across")
        assert a.receive_packet() == heard
        assert b.receive_packet() == heard
        assert b.request(chat.TELL, a_name + b"\0psst") == Packet(104, b"\0")
        assert a.receive_packet() == Packet(105, b_name + b"\0psst")
    finally:
        for client in opened:
            client.close()


def test_chat_across_two_worker_processes(server: Server) -> None:
    port = server.wait_ready(2)
    chat_across_workers(port, set(server.workers()))


def test_the_mesh_after_a_reload(server: Server) -> None:
    """New workers take over the old ones' names once those drain: still one mesh."""
    port = server.wait_ready(2)
    old = set(server.workers())
    os.kill(server.pid, signal.SIGHUP)
    server.wait_log(r"reload: 2 new workers ready")
    server.wait_log(r"stopped: exited with code 0", count=2)
    new = set(server.workers())
    assert len(new) == 2 and not new & old
    # The new workers started while the old ones held the names, and waited for them.
    assert "waits for its name" in server.text()
    chat_across_workers(port, new)


@pytest.fixture
def redis_url() -> Iterator[str]:
    try:
        redis = RedisServer().start()
    except RedisUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but redis-server cannot be started: {exc}")
        pytest.skip(f"no redis-server: {exc}")
    try:
        yield redis.url
    finally:
        redis.destroy()


def test_chat_across_two_instances_on_redis(tmp_path: Path, redis_url: str) -> None:
    servers = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            args = [*ARGS, "--set", f'bus.url="{redis_url}"']
            args[args.index("--workers") + 1] = "1"
            servers.append(Server(tmp_path / name, args).start())
        ports = [server.wait_ready(1) for server in servers]
        alice, _ = login(ports[0], "alice")
        bob, _ = login(ports[1], "bob")
        with alice, bob:
            for client in (alice, bob):
                assert client.request(chat.JOIN, b"lobby") == Packet(100, b"\0")
            wait_for(
                "WHO to list the members of both instances",
                lambda: alice.request(chat.WHO, b"lobby").body == b"alice\0bob" or None,
                10,
            )
            bob.send(chat.SAY, b"lobby\0over redis")
            heard = Packet(103, b"lobby\0bob\0over redis")
            assert bob.receive_packet() == heard
            assert alice.receive_packet() == heard
            assert alice.request(chat.TELL, b"bob\0psst") == Packet(104, b"\0")
            assert bob.receive_packet() == Packet(105, b"alice\0psst")
    finally:
        for server in servers:
            server.kill_all()
