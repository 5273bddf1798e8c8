"""The server's TLS set-up: its certificate, checked and loaded into ``ssl`` contexts.

::

    server_tls = load_server_tls(config.tls)    # TlsSetupError says which file and why
    server_tls.binary                           # context for server.tls_listen
    server_tls.https                            # the same certificate, ALPN http/1.1

The master loads this at start and on every reload, before any new worker
starts, and the workers inherit the loaded contexts across the fork: a reload
whose files are bad (unreadable, not PEM, a key that does not match, an
expired certificate) is refused with the reason, and the running workers keep
the certificate they have. ``python -m trioserver check-config`` runs the same
checks.

The contexts start from ``ssl.create_default_context(Purpose.CLIENT_AUTH)``
(the standard library's secure defaults: no SSLv3 or compression, good cipher
suites), with TLS 1.2 as the floor and client-initiated renegotiation off (a
cheap way for a client to make the server do expensive work).

Imports no trio: this is configuration, not I/O.
"""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path
from typing import Any, Final, NoReturn

import attrs

from .config import Config, TlsSettings

__all__ = ["ServerTls", "TlsSetupError", "describe_certificate", "load_server_tls"]

#: ALPN protocol offered on HTTPS (the server speaks HTTP/1.1 only).
HTTPS_ALPN: Final = ("http/1.1",)

_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_CERT_TIME: Final = "%b %d %H:%M:%S %Y %Z"


class TlsSetupError(OSError):
    """A certificate, key or CA file cannot be used; the message names the file and why.

    An ``OSError`` like the ``ssl.SSLError`` and file errors it stands for, so the
    master treats it as it treats a port it cannot bind: a start fails, a reload is
    refused and the running workers keep serving.
    """


@attrs.frozen(eq=False)
class ServerTls:
    """Server-side contexts for one certificate: the binary protocol's and HTTPS's."""

    binary: ssl.SSLContext
    https: ssl.SSLContext
    #: Seconds a client has to finish its handshake (``[tls] handshake_timeout``).
    handshake_timeout: float
    #: What was loaded, for log lines ("CN=example.com, expires 2027-01-01").
    description: str = ""


def load_server_tls(settings: TlsSettings, *, now: datetime.datetime | None = None) -> ServerTls:
    """Read and check ``[tls]``'s files; the contexts both TLS listeners serve.

    Raises :class:`TlsSetupError` (the file, and what is wrong with it) when a file
    is missing or unreadable, is not PEM, when the key does not belong to the
    certificate, or when the certificate has expired or is not valid yet.
    """
    if settings.certificate is None:
        raise TlsSetupError("[tls] certificate is not set")
    certificate = Path(settings.certificate)
    key = Path(settings.private_key) if settings.private_key is not None else None
    facts = _certificate_facts(certificate)
    if key is not None:
        _readable("private_key", key)
    if settings.client_ca is not None:
        _readable("client_ca", Path(settings.client_ca))
    _check_validity(certificate, facts, now or datetime.datetime.now(datetime.UTC))
    binary = _context(settings, certificate, key)
    https = _context(settings, certificate, key)
    https.set_alpn_protocols(list(HTTPS_ALPN))
    return ServerTls(binary, https, settings.handshake_timeout, describe_certificate(facts))


def load_config_tls(config: Config) -> ServerTls | None:
    """The contexts ``config`` needs: None when it has no TLS listener."""
    if not (config.server.tls_listen or config.http.tls_listen):
        return None
    return load_server_tls(config.tls)


def _context(settings: TlsSettings, certificate: Path, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = _VERSIONS[settings.minimum_version]
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(certificate, key, password=_no_passphrase)
    except _EncryptedKey:
        raise TlsSetupError(
            f"[tls] private_key {key or certificate} is encrypted: give the server an "
            "unencrypted key file readable only by its user (it cannot ask for a passphrase)"
        ) from None
    except ssl.SSLError as exc:
        _explain(exc, certificate, key)
    except OSError as exc:  # read a moment ago: the file changed under us
        raise TlsSetupError(f"cannot read [tls] certificate or private_key: {exc}") from None
    if settings.client_ca is not None:
        try:
            context.load_verify_locations(cafile=settings.client_ca)
        except ssl.SSLError as exc:
            raise TlsSetupError(
                f"[tls] client_ca {settings.client_ca} holds no PEM CA certificate ({exc.reason})"
            ) from None
        except OSError as exc:
            raise TlsSetupError(
                f"cannot read [tls] client_ca {settings.client_ca}: {exc.strerror or exc}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> NoReturn:
    # Without a callback, OpenSSL would prompt on the terminal for the passphrase.
    raise _EncryptedKey


def _readable(name: str, path: Path) -> None:
    """Name the file that cannot be opened (OpenSSL's own error does not say which)."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TlsSetupError(f"cannot read [tls] {name} {path}: {exc.strerror or exc}") from None


def _explain(exc: ssl.SSLError, certificate: Path, key: Path | None) -> NoReturn:
    reason = exc.reason or ""
    if reason == "KEY_VALUES_MISMATCH":
        raise TlsSetupError(
            f"[tls] private_key {key or certificate} does not belong to the certificate in "
            f"{certificate}: the pair does not match (renewed one file but not the other?)"
        ) from None
    if key is None:
        raise TlsSetupError(
            f"[tls] certificate {certificate} must hold the certificate (chain) and, with "
            f"private_key unset, the private key, in PEM ({reason or exc})"
        ) from None
    raise TlsSetupError(
        f"[tls] certificate {certificate} or private_key {key} is not a usable PEM file "
        f"({reason or exc})"
    ) from None


def _certificate_facts(certificate: Path) -> dict[str, Any]:
    """The leaf certificate's fields (subject, issuer, validity), as ``getpeercert`` gives them.

    The standard library has no public parser for a certificate on disk; its
    private test helper is the same decoder ``getpeercert`` uses. Where it is
    missing the validity check is skipped (the load below still checks the rest).
    """
    try:
        data = certificate.read_bytes()
    except OSError as exc:
        raise TlsSetupError(
            f"cannot read [tls] certificate {certificate}: {exc.strerror or exc}"
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TlsSetupError(
            f"[tls] certificate {certificate} holds no PEM certificate "
            "('-----BEGIN CERTIFICATE-----')"
        )
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:  # pragma: no cover - every CPython has it
        return {}
    try:
        facts: dict[str, Any] = decode(str(certificate))
    except ssl.SSLError as exc:
        raise TlsSetupError(
            f"[tls] certificate {certificate}: its first certificate cannot be read ({exc})"
        ) from None
    return facts


def _check_validity(certificate: Path, facts: dict[str, Any], now: datetime.datetime) -> None:
    not_after = _cert_time(facts.get("notAfter"))
    not_before = _cert_time(facts.get("notBefore"))
    if not_after is not None and now > not_after:
        raise TlsSetupError(
            f"[tls] certificate {certificate} expired on {not_after:%Y-%m-%d %H:%M} UTC: "
            "clients would refuse it; install the renewed certificate"
        )
    if not_before is not None and now < not_before:
        raise TlsSetupError(
            f"[tls] certificate {certificate} is not valid before "
            f"{not_before:%Y-%m-%d %H:%M} UTC (check this machine's clock)"
        )


def _cert_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        when = datetime.datetime.strptime(text, _CERT_TIME)
    except ValueError:
        return None
    return when.replace(tzinfo=datetime.UTC)


def describe_certificate(facts: dict[str, Any]) -> str:
    """``subject CN=example.com, expires 2027-01-01`` for a certificate's fields."""
    names = [(name, value) for rdn in facts.get("subject", ()) for name, value in rdn]
    subject = ", ".join(f"{_SHORT.get(name, name)}={value}" for name, value in names)
    not_after = _cert_time(facts.get("notAfter"))
    expires = f", expires {not_after:%Y-%m-%d}" if not_after is not None else ""
    return f"subject {subject or '(empty)'}{expires}"


_SHORT: Final = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
}
