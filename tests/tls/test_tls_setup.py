"""Loading the certificate: what each bad file says, the settings' rules, check-config."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from trioserver import cli
from trioserver.config import ConfigError, load_config
from trioserver.tls import TlsSetupError, load_server_tls

from .conftest import Pki, write_pair


def test_the_pair_loads_with_modern_defaults(pki: Pki) -> None:
    import ssl

    loaded = pki.server_tls()
    assert loaded.binary.minimum_version is ssl.TLSVersion.TLSv1_2
    assert loaded.binary.verify_mode is ssl.CERT_NONE
    assert loaded.binary.options & ssl.OP_NO_RENEGOTIATION
    assert loaded.handshake_timeout == 10.0
    assert "expires 3000-01-01" in loaded.description
    with_ca = pki.server_tls(tls__client_ca=pki.ca_file, tls__minimum_version="1.3")
    assert with_ca.https.verify_mode is ssl.CERT_REQUIRED
    assert with_ca.https.minimum_version is ssl.TLSVersion.TLSv1_3


def test_a_key_of_another_certificate_is_a_mismatch(pki: Pki, tmp_path: Path) -> None:
    _, other_key = write_pair(pki.ca.issue_cert("other"), tmp_path, "other")
    with pytest.raises(TlsSetupError, match=r"does not belong to the certificate"):
        load_server_tls(pki.config(tls__private_key=other_key).tls)


def test_an_unreadable_file_is_named(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    with pytest.raises(TlsSetupError, match=r"cannot read \[tls\] private_key .*missing.key"):
        load_server_tls(pki.config(tls__private_key=missing).tls)
    with pytest.raises(TlsSetupError, match=r"cannot read \[tls\] certificate .*missing.key"):
        load_server_tls(pki.config(tls__certificate=missing).tls)
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("hello")
    with pytest.raises(TlsSetupError, match=r"holds no PEM certificate"):
        load_server_tls(pki.config(tls__certificate=not_pem).tls)
    with pytest.raises(TlsSetupError, match=r"client_ca .*notes.txt holds no PEM CA"):
        load_server_tls(pki.config(tls__client_ca=not_pem).tls)


def test_an_expired_certificate_is_refused(pki: Pki, tmp_path: Path) -> None:
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    expired = pki.ca.issue_cert("localhost", not_after=past)
    chain, key = write_pair(expired, tmp_path, "expired")
    with pytest.raises(TlsSetupError, match=r"expired on 2020-01-01"):
        load_server_tls(pki.config(tls__certificate=chain, tls__private_key=key).tls)


def test_an_encrypted_key_is_refused_without_a_prompt(pki: Pki, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.private_key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TlsSetupError, match=r"is encrypted"):
        load_server_tls(pki.config(tls__private_key=encrypted).tls)


def test_the_key_may_live_in_the_certificate_file(pki: Pki, tmp_path: Path) -> None:
    both = tmp_path / "both.pem"
    both.write_bytes(pki.certificate.read_bytes() + pki.private_key.read_bytes())
    load_server_tls(pki.config(tls__certificate=both, tls__private_key=None).tls)


def test_tls_listeners_need_a_certificate_and_their_own_addresses(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text('[server]\ntls_listen = ["127.0.0.1:10443"]\n')
    with pytest.raises(ConfigError, match=r"\[server\] tls_listen need a certificate"):
        load_config(path)
    path.write_text(
        '[http]\nlisten = ["127.0.0.1:8443"]\ntls_listen = ["127.0.0.1:8443"]\n'
        '[tls]\ncertificate = "c.pem"\n'
    )
    with pytest.raises(ConfigError, match=r"\[http\] listen and \[http\] tls_listen share"):
        load_config(path)
    path.write_text('[tls]\ncertificate = "c.pem"\n')
    assert load_config(path, base=tmp_path).tls.certificate == tmp_path / "c.pem"


def _config_file(tmp_path: Path, certificate: Path, key: Path) -> Path:
    path = tmp_path / "tls.toml"
    path.write_text(
        f'[server]\ntls_listen = ["127.0.0.1:10443"]\n'
        f'[tls]\ncertificate = "{certificate}"\nprivate_key = "{key}"\n'
    )
    return path


def test_check_config_loads_the_pair(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _config_file(tmp_path, pki.certificate, pki.private_key)
    assert cli.main(["check-config", str(good)]) == 0
    assert "ok (TLS: subject" in capsys.readouterr().out
    _, other_key = write_pair(trustme.CA().issue_cert("x"), tmp_path, "x")
    bad = _config_file(tmp_path, pki.certificate, other_key)
    assert cli.main(["check-config", str(bad)]) == 2
    assert "does not belong to the certificate" in capsys.readouterr().err
    missing = _config_file(tmp_path, tmp_path / "nope.pem", pki.private_key)
    assert cli.main(["check-config", str(missing)]) == 2
    assert "cannot read [tls] certificate" in capsys.readouterr().err
    past = datetime.datetime(2021, 6, 1, tzinfo=datetime.UTC)
    chain, key = write_pair(pki.ca.issue_cert("localhost", not_after=past), tmp_path, "old")
    assert cli.main(["check-config", str(_config_file(tmp_path, chain, key))]) == 2
    assert "expired on 2021-06-01" in capsys.readouterr().err
