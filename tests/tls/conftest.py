"""Certificates made by the tests themselves (trustme): a CA, the server's pair, clients'."""

from __future__ import annotations

import ssl
from pathlib import Path

import attrs
import pytest
import trustme

from trioserver.config import Config
from trioserver.testing import memory_config
from trioserver.tls import ServerTls, load_server_tls


@attrs.frozen
class Pki:
    """A CA, the server's certificate files, and what clients need to trust them."""

    ca: trustme.CA
    ca_file: Path
    certificate: Path
    private_key: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(context)
        return context

    def config(self, **settings: object) -> Config:
        """The memory config with this certificate (and ``section__name`` overrides)."""
        files = {"tls__certificate": self.certificate, "tls__private_key": self.private_key}
        return memory_config(**{**files, **settings})

    def server_tls(self, **settings: object) -> ServerTls:
        return load_server_tls(self.config(**settings).tls)


def write_pair(cert: trustme.LeafCert, directory: Path, name: str) -> tuple[Path, Path]:
    """The chain (leaf first) and the key, as two PEM files."""
    chain = directory / f"{name}.pem"
    key = directory / f"{name}.key"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    return chain, key


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    certificate, key = write_pair(ca.issue_cert("localhost", "127.0.0.1"), directory, "server")
    return Pki(ca, ca_file, certificate, key)
