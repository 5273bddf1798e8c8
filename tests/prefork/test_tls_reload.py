"""TLS certificates reload with the config (SIGHUP), in real processes.

New connections get the new certificate; a reload whose files are bad is refused
with the reason, and the workers keep the certificate (and the connections) they have.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from real_server import Server

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
