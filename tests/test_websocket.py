"""WebSocket on a real worker's HTTP port (loopback), against the `websockets` package and wsproto.

The same router, rules and hub serve TCP and WebSocket connections: a chat message
said on one reaches both.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from examples import chat
from trioserver.client import Client
from trioserver.config import Address
from trioserver.framer import Packet, encode
from trioserver.worker import Worker

from .conftest import make_config
from .polling import wait_until
from .ws_client import Refused, WebSocketStream

PING = encode(0, b"")


@pytest.fixture
async def worker(nursery: trio.Nursery) -> AsyncIterator[Worker]:
    config = make_config(
        server__listen=(Address("127.0.0.1", 0),),
        http__listen=(Address("127.0.0.1", 0),),
        accounts__url="memory:",
        connection__flood_check=False,
    )
    worker = Worker(config, chat.router)
    await nursery.start(worker.serve)
    yield worker
    worker.stop(grace=0)


def ports(worker: Worker) -> tuple[int, int]:
    return worker.addresses[0][1], worker.http_addresses[0][1]


def raw_handshake(port: int, head: bytes) -> bytes:
    """Send a handshake by hand; what the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
        return bytes(received)


def head(port: int, *lines: str) -> bytes:
    fields = {
        "Host": f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    for line in lines:
        name, _, value = line.partition(": ")
        if value:
            fields[name] = value
        else:
            fields.pop(name.rstrip(":"), None)
    text = "GET /ws HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return text.encode()


async def test_websockets_client_pings_and_closes_cleanly(worker: Worker) -> None:
    _, http = ports(worker)

    def client() -> tuple[str | None, bytes, int | None]:
        with connect(f"ws://127.0.0.1:{http}/ws", subprotocols=["trioserver.v1"]) as ws:
            ws.send(PING * 2)
            got = b""
            while len(got) < 16:
                got += ws.recv()  # type: ignore[operator]
            assert ws.ping(b"x").wait(10)  # a WebSocket ping frame is answered with a pong
            ws.close()
            return ws.subprotocol, got, ws.close_code

    subprotocol, got, code = await trio.to_thread.run_sync(client)
    assert (subprotocol, got, code) == ("trioserver.v1", PING * 2, 1000)
    await wait_until(lambda: not worker.connections())
    stats = worker.statistics()
    assert stats.kicks_by_reason == {} and stats.http_by_status == {101: 1}


@pytest.mark.parametrize(
    ("lines", "status"),
    [
        (("Sec-WebSocket-Key:",), b"400"),
        (("Sec-WebSocket-Version: 8",), b"426"),
        (("Origin: https://evil.example",), b"403"),
        (("Upgrade:",), b"426"),
        (("Sec-WebSocket-Protocol: chat.v2",), b"400"),
    ],
)
async def test_bad_handshakes_are_refused_on_the_wire(
    worker: Worker, lines: tuple[str, ...], status: bytes
) -> None:
    _, http = ports(worker)
    answer = await trio.to_thread.run_sync(raw_handshake, http, head(http, *lines))
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:80]
    if status == b"426":
        assert b"\r\nSec-WebSocket-Version: 13\r\n" in answer
    assert not worker.connections()


async def test_the_same_origin_page_may_connect(worker: Worker) -> None:
    _, http = ports(worker)
    stream = await WebSocketStream.connect("127.0.0.1", http, origin=f"http://127.0.0.1:{http}")
    async with Client(stream) as client:
        await client.ping()
    with pytest.raises(Refused) as refused:
        await WebSocketStream.connect("127.0.0.1", http, origin="http://localhost:1")
    assert refused.value.status == 403


async def test_a_hub_push_reaches_websocket_and_tcp_alike(worker: Worker) -> None:
    tcp_port, http = ports(worker)
    tcp = await Client.connect("127.0.0.1", tcp_port)
    web = Client(await WebSocketStream.connect("127.0.0.1", http))
    for client, name in ((tcp, "tcp-user"), (web, "web-user")):
        await client.register(name, "pw")
        assert (await client.login(name, "pw")).result == 0
        assert await client.request(chat.JOIN, b"lobby") == Packet(chat.JOIN, b"\0")
    assert await web.request(chat.WHO, b"lobby") == Packet(chat.WHO, b"tcp-user\0web-user")
    for sender in (web, tcp):
        await sender.send(chat.SAY, b"lobby\0hello")
        said_by = b"web-user" if sender is web else b"tcp-user"
        heard = Packet(chat.HEARD, b"lobby\0" + said_by + b"\0hello")
        for client in (tcp, web):
            with trio.fail_after(10):
                assert await client.receive_packet() == heard
    assert worker.hub.statistics().counters()  # the hub delivered them
    await tcp.aclose()
    await web.aclose()


async def test_a_drain_ends_a_websocket_with_1001(worker: Worker) -> None:
    _, http = ports(worker)

    def client(ready: trio.Event, token: trio.lowlevel.TrioToken) -> int | None:
        with connect(f"ws://127.0.0.1:{http}/ws") as ws:
            ws.send(PING)
            ws.recv()
            trio.from_thread.run_sync(ready.set, trio_token=token)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
            return ws.close_code

    ready = trio.Event()
    token = trio.lowlevel.current_trio_token()
    async with trio.open_nursery() as nursery:
        codes: list[int | None] = []

        async def run() -> None:
            codes.append(await trio.to_thread.run_sync(client, ready, token))

        nursery.start_soon(run)
        await ready.wait()
        worker.stop()
    assert codes == [1001]
    assert worker.statistics().kicks_by_reason == {}


async def test_websocket_off_leaves_the_path_to_the_site(nursery: trio.Nursery) -> None:
    config = make_config(
        server__listen=(Address("127.0.0.1", 0),),
        http__listen=(Address("127.0.0.1", 0),),
        http__websocket_path="",
    )
    worker = Worker(config)
    await nursery.start(worker.serve)
    http = worker.http_addresses[0][1]
    answer = await trio.to_thread.run_sync(raw_handshake, http, head(http))
    assert answer.startswith(b"HTTP/1.1 404 ")
    worker.stop(grace=0)


async def test_a_websocket_holds_its_pool_slot_and_reads_no_proxy_header(
    nursery: trio.Nursery,
) -> None:
    """The HTTP connection's slot becomes the WebSocket's (max_connections holds); the
    PROXY rule of the binary listeners does not reach the HTTP port."""
    config = make_config(
        server__listen=(Address("127.0.0.1", 0),),
        http__listen=(Address("127.0.0.1", 0),),
        server__max_connections=1,
        server__proxy_protocol="v1",
        connection__recycle_delay=0,
    )
    worker = Worker(config)
    await nursery.start(worker.serve)
    http = worker.http_addresses[0][1]
    async with Client(await WebSocketStream.connect("127.0.0.1", http)) as client:
        await client.ping()
        assert len(worker.connections()) == 1 and worker.pool.statistics().in_use == 1
        answer = await trio.to_thread.run_sync(
            raw_handshake, http, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 503 ")
    await wait_until(lambda: worker.pool.statistics().in_use == 0)
    async with Client(await WebSocketStream.connect("127.0.0.1", http)) as client:
        await client.ping()
    assert worker.statistics().connections_refused == 1
    worker.stop(grace=0)


async def test_a_websocket_keeps_its_http_connections_network_count(
    nursery: trio.Nursery,
) -> None:
    """The handshake turns the HTTP connection into a binary one in the same slot: it
    stays counted once, against binary connections too, and is released once."""
    config = make_config(
        server__listen=(Address("127.0.0.1", 0),),
        http__listen=(Address("127.0.0.1", 0),),
        accounts__url="memory:",
        server__max_connections_per_network=2,
        server__connection_cap_exempt=[],
    )
    worker = Worker(config, chat.router)
    await nursery.start(worker.serve)
    binary, http = ports(worker)
    web = Client(await WebSocketStream.connect("127.0.0.1", http))
    assert (await web.request(0)).code == 0
    assert worker.caps.open == {"127.0.0.1/32": 1}
    plain = await Client.connect("127.0.0.1", binary)
    assert (await plain.request(0)).code == 0
    over = await Client.connect("127.0.0.1", binary)
    assert await over.at_eof()
    await over.aclose()
    await web.aclose()
    await wait_until(lambda: worker.caps.open == {"127.0.0.1/32": 1})
    await plain.aclose()
    await wait_until(lambda: worker.caps.open == {})
    assert worker.statistics().network_refused == 1
    worker.stop(grace=0)
