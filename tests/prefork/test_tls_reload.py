"""TLS certificates reload with the config (SIGHUP), in real processes.

New connections get the new certificate; a reload whose files are bad is refused
with the reason, and the workers keep the certificate (and the connections) they have.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from real_server import Server
from sample_apps import WHO

from trioserver.client import BlockingClient

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

CONFIG = """\
[server]
tls_listen = ["127.0.0.1:{port}"]
[http]
listen = []
[accounts]
url = "memory:"
[tls]
certificate = "server.pem"
private_key = "server.key"
"""


def install(ca: trustme.CA, tmp: Path, name: str = "server") -> None:
    cert = ca.issue_cert("localhost")
    (tmp / f"{name}.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(tmp / f"{name}.key"))


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    # Both lists say 127.0.0.1:0: each listener gets a port of its own.
    config = CONFIG.format(port=0)
    made = Server(tmp_path, ["--listen", "127.0.0.1:0", "--workers", "1"], config=config)
    yield made
    made.kill_all()


def test_reload_serves_the_new_certificate_and_refuses_a_bad_one(
    server: Server, tmp_path: Path
) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    install(old_ca, tmp_path)
    server.start()
    plain = server.wait_ready(1)
    port = int(server.wait_log(r"listening \(TLS\) on 127\.0\.0\.1:(\d+)")[0].group(1))
    assert port != plain
    with BlockingClient.connect("127.0.0.1", plain) as client:
        client.ping()  # plaintext on its own port, TLS on the other
    with BlockingClient.connect("localhost", port, tls=trusting(old_ca)) as old:
        old.ping()
        # A key that does not match: the reload is refused and says why.
        install(new_ca, tmp_path, "other")
        shutil.copy(tmp_path / "other.key", tmp_path / "server.key")
        os.kill(server.pid, signal.SIGHUP)
        server.wait_log(r"reload: \[tls\] private_key .* does not belong .* keep running")
        old.ping()  # the old connection keeps working...
        with BlockingClient.connect("localhost", port, tls=trusting(old_ca)) as again:
            again.ping()  # ...and new ones still get the old certificate
        # A good pair: new connections get it once the new worker is ready.
        install(new_ca, tmp_path)
        os.kill(server.pid, signal.SIGHUP)
        server.wait_log(r"reload: 1 new workers ready")
        with BlockingClient.connect("localhost", port, tls=trusting(new_ca)) as new:
            new.ping()
        with pytest.raises(ssl.SSLCertVerificationError):
            BlockingClient.connect("localhost", port, tls=trusting(old_ca))
        # The old worker drained: the idle old connection ended cleanly (close_notify).
        assert old.at_eof()
    with BlockingClient.connect("127.0.0.1", plain) as client:
        client.ping()  # the reload kept both ports
    assert "Traceback" not in server.text()


def test_a_session_ticket_from_one_worker_resumes_on_another(tmp_path: Path) -> None:
    """The workers inherit the master's contexts, ticket keys included: a reconnecting
    client resumes whichever worker the kernel hands it to."""
    ca = trustme.CA()
    install(ca, tmp_path)
    args = ["--listen", "127.0.0.1:0", "--workers", "2", "--app", "sample_apps:who_router"]
    server = Server(tmp_path, args, config=CONFIG.format(port=0))
    try:
        server.start()
        server.wait_ready(2)
        port = int(server.wait_log(r"listening \(TLS\) on 127\.0\.0\.1:(\d+)")[0].group(1))
        context = trusting(ca)
        session: ssl.SSLSession | None = None
        pids, resumed = set(), []
        for _ in range(20):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            with context.wrap_socket(raw, server_hostname="localhost", session=session) as sock:
                pids.add(int(BlockingClient(sock).request(WHO).body.split()[0]))
                resumed.append(sock.session_reused)
                session = sock.session
        assert resumed == [False] + [True] * 19
        assert len(pids) == 2  # both workers served (all 20 on one: once in half a million)
    finally:
        server.kill_all()
