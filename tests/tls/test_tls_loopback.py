"""TLS on real loopback sockets (port 0) with real clients: ours, curl, http.client."""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.polling import wait_for
from trioserver.client import BlockingClient, Client, client_tls_context
from trioserver.config import Address, Config
from trioserver.dispatch import Router
from trioserver.framer import PING, Packet
from trioserver.handlers import Context, default_router
from trioserver.messages import ResultCode
from trioserver.worker import Worker

from .conftest import Pki

LOOPBACK = (Address("127.0.0.1", 0),)


@asynccontextmanager
async def serve_tls(config: Config, router: Router | None = None) -> AsyncIterator[Worker]:
    """A worker with plaintext and TLS listeners for both protocols, on free ports."""
    config = config.replace(
        server__listen=LOOPBACK,
        server__tls_listen=LOOPBACK,
        http__listen=LOOPBACK,
        http__tls_listen=LOOPBACK,
    )
    worker = Worker(config, router)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        try:
            yield worker
        finally:
            worker.stop()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "index.html").write_bytes(b"<h1>over TLS</h1>\n")
    return tmp_path


async def test_clients_ping_register_login_over_tls(pki: Pki) -> None:
    async with serve_tls(pki.config()) as worker:
        port = worker.tls_addresses[0][1]
        context = client_tls_context(cafile=pki.ca_file)
        async with await Client.connect("127.0.0.1", port, tls=context) as client:
            await client.ping()
            assert (await client.register("alice", "secret")).result == ResultCode.OK

        def blocking() -> int:
            with BlockingClient.connect("localhost", port, tls=context) as client:
                client.ping()
                return client.login("alice", "secret").result

        assert await trio.to_thread.run_sync(blocking) == ResultCode.OK
        assert worker.statistics().tls_handshakes == 2


async def test_https_get_with_curl(pki: Pki, site: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but curl is not installed (.ci/run installs it)")
        pytest.skip("curl is not installed (.ci/run installs it)")
    async with serve_tls(pki.config(http__document_root=site)) as worker:
        port = worker.https_addresses[0][1]
        result = await trio.run_process(
            [curl, "-sS", "-v", "--cacert", str(pki.ca_file), f"https://localhost:{port}/"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"<h1>over TLS</h1>\n"
    assert b"ALPN: server accepted http/1.1" in result.stderr


async def test_https_get_with_http_client(pki: Pki, site: Path) -> None:
    async with serve_tls(pki.config(http__document_root=site)) as worker:
        port = worker.https_addresses[0][1]
        context = pki.client_context()
        context.set_alpn_protocols(["h2", "http/1.1"])

        def get() -> tuple[int, bytes, str | None]:
            conn = http.client.HTTPSConnection("localhost", port, timeout=10, context=context)
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read()
                conn.request("GET", "/index.html")  # keep-alive over TLS
                again = conn.getresponse().read()
                assert again == body
                assert isinstance(conn.sock, ssl.SSLSocket)
                return response.status, body, conn.sock.selected_alpn_protocol()
            finally:
                conn.close()

        status, body, alpn = await trio.to_thread.run_sync(get)
    assert (status, body, alpn) == (200, b"<h1>over TLS</h1>\n", "http/1.1")


async def test_plaintext_on_real_tls_ports_is_counted_not_traced(
    pki: Pki, site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serve_tls(pki.config(http__document_root=site)) as worker:
        ports = [worker.tls_addresses[0][1], worker.https_addresses[0][1]]
        requests = [PING, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]

        def plaintext(port: int, request: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request)
                return sock.recv(1024)

        for port, request in zip(ports, requests, strict=True):
            assert await trio.to_thread.run_sync(plaintext, port, request) == b""
        assert worker.statistics().tls_failures_by_reason == {"not_tls": 2}
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_flood_kick_over_tcp_delivers_every_reply_then_close_notify(pki: Pki) -> None:
    async with serve_tls(pki.config()) as worker:
        port = worker.tls_addresses[0][1]

        def pipeline() -> tuple[int, bytes]:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            with pki.client_context().wrap_socket(raw, server_hostname="localhost") as sock:
                sock.sendall(PING * 11 + PING * 200)  # the 11th floods; the rest unread
                client = BlockingClient(sock)
                replies = [client.receive_packet() for _ in range(10)]
                assert replies == [Packet(0)] * 10
                # suppress_ragged_eofs=False would raise on a TCP end without close_notify.
                sock.suppress_ragged_eofs = False
                return len(replies), sock.recv(100)

        assert await trio.to_thread.run_sync(pipeline) == (10, b"")
        await trio.testing.wait_all_tasks_blocked()
        assert worker.statistics().kicks_by_reason == {"flood": 1}


async def test_the_command_line_client_over_tls(
    pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    from trioserver import cli

    async with serve_tls(pki.config()) as worker:
        server = f"localhost:{worker.tls_addresses[0][1]}"
        argv = ["client", "--server", server, "--tls", "--cafile", str(pki.ca_file), "ping"]
        assert await trio.to_thread.run_sync(cli.main, argv) == 0
        assert f"ping {server}: " in capsys.readouterr().out
        # Without the CA the server's certificate is not trusted: an error, not a traceback.
        assert await trio.to_thread.run_sync(cli.main, [*argv[:4], "ping"]) == 1
        assert "certificate verify failed" in capsys.readouterr().err


async def test_a_websocket_over_https_with_the_websockets_client(pki: Pki) -> None:
    """wss:// on the HTTPS port: the WebSocket transport over the TLS transport."""
    from websockets.sync.client import connect

    async with serve_tls(pki.config()) as worker:
        port = worker.https_addresses[0][1]
        context = pki.client_context()

        def client() -> tuple[bytes, int | None]:
            url = f"wss://localhost:{port}/ws"
            with connect(url, ssl=context, subprotocols=["trioserver.v1"]) as ws:
                ws.send(PING * 3)
                got = b""
                while len(got) < 24:
                    got += ws.recv()  # type: ignore[operator]
                ws.close()
                return got, ws.close_code

        assert await trio.to_thread.run_sync(client) == (PING * 3, 1000)
        stats = worker.statistics()
        assert stats.http_by_status == {101: 1} and stats.kicks_by_reason == {}


WHO = 200  # replies with the client certificate's common name


def reconnect(port: int, context: ssl.SSLContext, code: int = 0) -> list[tuple[bool, bytes]]:
    """Two connections, the second offering the first one's session ticket: for each,
    whether the server resumed it, and the reply to ``code``."""
    session: ssl.SSLSession | None = None
    seen = []
    for _ in range(2):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with context.wrap_socket(raw, server_hostname="localhost", session=session) as sock:
            reply = BlockingClient(sock).request(code)  # it comes after the session tickets
            seen.append((sock.session_reused, reply.body))
            session = sock.session
    return seen


async def test_a_reconnecting_client_resumes_its_tls_session(pki: Pki) -> None:
    """TLS 1.3 session tickets: a reconnect storm costs resumed handshakes, not full ones."""
    async with serve_tls(pki.config()) as worker:
        port = worker.tls_addresses[0][1]
        seen = await trio.to_thread.run_sync(reconnect, port, pki.client_context())
        assert [resumed for resumed, _ in seen] == [False, True]
        assert worker.statistics().tls_handshakes == 2


async def test_a_resumed_session_keeps_its_client_certificate(pki: Pki) -> None:
    router = default_router()

    def who(ctx: Context, packet: Packet) -> None:
        cert = ctx.peer_certificate
        ctx.reply(WHO, str(cert.common_name if cert is not None else None).encode())

    router.add(WHO, who)
    async with serve_tls(pki.config(tls__client_ca=pki.ca_file), router) as worker:
        port = worker.tls_addresses[0][1]
        context = pki.client_context()
        pki.ca.issue_cert("device-17", common_name="device-17").configure_cert(context)
        seen = await trio.to_thread.run_sync(reconnect, port, context, WHO)
    assert seen == [(False, b"device-17"), (True, b"device-17")]


async def test_openssl_s_client_resumes_with_sess_out_and_sess_in(pki: Pki, tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but openssl is not installed")
        pytest.skip("openssl is not installed")
    session = tmp_path / "session.pem"
    async with serve_tls(pki.config()) as worker:
        port = worker.tls_addresses[0][1]
        argv = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile"]
        argv += [str(pki.ca_file), "-servername", "localhost"]

        def handshakes() -> int:
            return int(trio.from_thread.run_sync(worker.statistics).tls_handshakes)

        # The first writes the session when its ticket arrives; the second offers it.
        first = await trio.to_thread.run_sync(
            s_client, [*argv, "-sess_out", str(session)], session.exists
        )
        second = await trio.to_thread.run_sync(
            s_client, [*argv, "-sess_in", str(session)], lambda: handshakes() == 2
        )
    assert "New, TLSv1.3" in first
    assert "Reused, TLSv1.3" in second


def s_client(argv: list[str], done: Callable[[], bool]) -> str:
    """Run ``openssl s_client`` until ``done()``, then end its input so it quits; its output
    (written only at exit: its stdout is a pipe)."""
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        try:
            wait_for(f"{argv[-2]}: the handshake", done)
        finally:
            process.stdin.close()
            output = process.stdout.read().decode(errors="replace")
        assert process.wait(10) == 0, output
    return output
