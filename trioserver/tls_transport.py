"""TLS as a transport: an ``ssl.SSLObject`` on memory BIOs, driven on the transport below.

::

    upgrade = TlsUpgrade(server_tls.binary, server_tls.handshake_timeout, counters)
    tls = await upgrade(transport, early, conn)   # a TlsTransport, or None: refused (counted)

A TLS listener accepts plaintext transports like any other; the connection's
task reads its PROXY header first (HAProxy sends it before the handshake), then
hands the transport and the bytes that came after the header to the upgrade,
which runs the server side of the handshake under a deadline of its own. The
result, :class:`TlsTransport`, is the seam again (for the reader, the outbox and
HTTP), with OpenSSL between it and the transport below::

    reader ← SSLObject.read ← incoming BIO ← lower.receive_nowait (a recv)
    outbox → SSLObject.write → outgoing BIO → lower.send_nowait (a send)

This is the machine ``trio.SSLStream`` runs, without its task round trips: the
reader decrypts what one ``recv`` brought without a scheduler pass of its own,
and a reply is encrypted and sent from the caller's own call, as on a plain
socket. When the socket does not take all the ciphertext, what is left (at most
one TLS record beyond the kernel's buffer) goes out from a flusher task, and
``send_nowait`` takes nothing until it has: the outbox then queues and counts
replies as for a full socket, so the send caps hold. All ciphertext leaves through
the one outgoing BIO and one sender at a time, in order; what OpenSSL writes while
reading (a TLS 1.3 session ticket, a key update) leaves with the next send, or at
once when no send is under way.

A handshake that fails, times out, or meets plaintext (a first byte that is not
a TLS handshake record) closes the connection quietly: counted by reason
(:class:`TlsFailure`, the worker's ``tls_failures_by_reason``) and one log line,
never a traceback.

Closing: a finished connection lingers (see :func:`trioserver.transport.linger`)
on TLS too, because under the TLS layer is the same TCP socket whose unread
bytes would turn the close into a reset. Its ``send_eof`` sends TLS's
close_notify and then shuts the socket's sending side, so the peer reads every
reply and then a clean end; lingering then discards the raw bytes still coming.
A TLS transport lingers even over a memory link, so that the testing kit's
connections end as the sockets' do (with a close_notify). A kick closes at once,
without one.
A peer that closes TCP without a close_notify (a "ragged EOF", what most HTTPS
clients do) is read as EOF, not as an error.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Awaitable
from typing import Any, Final, Protocol

import attrs
import trio

from .reasons import CloseReason, KickReason, TlsFailure
from .transport import LINGER_TIMEOUT, STREAM_RECEIVE_SIZE, Transport

__all__ = [
    "PeerCertificate",
    "TlsFailure",
    "TlsTransport",
    "TlsUpgrade",
    "classify_failure",
]

log = logging.getLogger("trioserver.tls")

#: Plaintext encrypted per write: one full TLS record. A reply is sent record by record,
#: so at most one record's ciphertext waits beyond the socket's buffer.
TLS_RECORD_BYTES: Final = 16384

#: The first byte of every TLS record that opens a handshake (content type 22).
_HANDSHAKE_RECORD: Final = 0x16


#: OpenSSL reasons (``SSLError.reason``) that name a client-certificate problem or a
#: version mismatch; alerts the peer sent start with one of ``_ALERT_PREFIXES``.
_CLIENT_CERTIFICATE_REASONS: Final = frozenset(
    {"PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_VERIFY_FAILED", "NO_CERTIFICATE_RETURNED"}
)
_VERSION_REASONS: Final = frozenset(
    {
        "UNSUPPORTED_PROTOCOL",
        "VERSION_TOO_LOW",
        "NO_PROTOCOLS_AVAILABLE",
        "TLSV1_ALERT_PROTOCOL_VERSION",
    }
)
_ALERT_PREFIXES: Final = ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")


def _is_eof(exc: BaseException | None) -> bool:
    """A TCP end without TLS's close_notify (OpenSSL names it in more than one way)."""
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLSyscallError):
        return True
    return "UNEXPECTED_EOF_WHILE_READING" in str(getattr(exc, "strerror", "") or "")


def classify_failure(exc: BaseException, first_byte: int | None) -> tuple[TlsFailure, str]:
    """Why a handshake failed with ``exc``, and OpenSSL's own word for it (for the log)."""
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    detail = ""
    if isinstance(cause, ssl.SSLError):
        detail = cause.reason or str(cause)
    elif cause is not None:
        detail = str(cause) or type(cause).__name__
    if first_byte is not None and first_byte != _HANDSHAKE_RECORD:
        return TlsFailure.NOT_TLS, detail or f"first byte 0x{first_byte:02x}"
    if isinstance(cause, ssl.SSLCertVerificationError):
        return TlsFailure.CLIENT_CERTIFICATE, cause.verify_message or detail
    if isinstance(cause, ssl.SSLError) and not _is_eof(cause):
        reason = cause.reason or ""
        if reason in _CLIENT_CERTIFICATE_REASONS:
            return TlsFailure.CLIENT_CERTIFICATE, detail
        if reason in _VERSION_REASONS:
            return TlsFailure.VERSION, detail
        if reason.startswith(_ALERT_PREFIXES):
            return TlsFailure.PEER_ALERT, detail
        return TlsFailure.PROTOCOL, detail
    return TlsFailure.PEER_GONE, detail or "end of stream"


@attrs.frozen
class PeerCertificate:
    """The verified client certificate (``[tls] client_ca`` set), as handlers see it."""

    #: The subject's attributes in order, e.g. ``(("organizationName", "ACME"), ...)``.
    subject: tuple[tuple[str, str], ...]
    issuer: tuple[tuple[str, str], ...]
    serial_number: str
    not_after: str
    #: ``(("DNS", "device-17.example"), ("IP Address", "10.0.0.7"), ...)``.
    alt_names: tuple[tuple[str, str], ...] = ()

    @property
    def common_name(self) -> str | None:
        """The subject's commonName, if it has one."""
        for name, value in self.subject:
            if name == "commonName":
                return value
        return None

    @classmethod
    def from_ssl(cls, cert: dict[str, Any]) -> PeerCertificate:
        """From ``SSLObject.getpeercert()`` (a verified certificate's decoded fields)."""

        def flat(rdns: Any) -> tuple[tuple[str, str], ...]:
            return tuple((str(name), str(value)) for rdn in rdns for name, value in rdn)

        return cls(
            subject=flat(cert.get("subject", ())),
            issuer=flat(cert.get("issuer", ())),
            serial_number=str(cert.get("serialNumber", "")),
            not_after=str(cert.get("notAfter", "")),
            alt_names=tuple((str(k), str(v)) for k, v in cert.get("subjectAltName", ())),
        )


class TlsTransport:
    """The seam over a handshaken ``SSLObject`` (see the module docstring).

    ``nursery`` is where the flusher runs when the socket does not take a reply's
    ciphertext at once; without one, ``send_nowait`` takes nothing and every send
    waits in the caller's task.
    """

    __slots__ = (
        "_broken",
        "_flusher_scope",
        "_incoming",
        "_nursery",
        "_outgoing",
        "_progress",
        "_raw",
        "_sending",
        "_ssl",
        "_tls_closed",
        "lingers",
        "lower",
        "peer_certificate",
    )

    def __init__(
        self,
        lower: Transport,
        ssl_object: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        peer_certificate: PeerCertificate | None = None,
        nursery: trio.Nursery | None = None,
    ) -> None:
        self.lower = lower
        self.peer_certificate = peer_certificate
        #: Always: under TCP, unread bytes would reset the replies (as in plaintext), and
        #: on any transport the linger's first step, send_eof, says TLS's goodbye.
        self.lingers = True
        self._ssl = ssl_object
        self._incoming = incoming
        self._outgoing = outgoing
        self._nursery = nursery
        #: Ciphertext the socket did not take yet (the flusher sends it).
        self._raw = b""
        #: A task owns the lower transport's sending side (send_all or the flusher).
        self._sending = False
        self._tls_closed = False
        self._broken: BaseException | None = None
        self._progress = trio.lowlevel.ParkingLot()
        self._flusher_scope: trio.CancelScope | None = None

    @property
    def socket(self) -> None:
        """None: bytes must go through TLS, never ``os.sendfile``."""
        return None

    # -- receiving ----------------------------------------------------------------------

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        if self._tls_closed:  # after our close_notify: raw bytes, for the linger to drop
            return self.lower.receive_nowait(max_bytes)
        ssl_object = self._ssl
        while True:
            try:
                data = ssl_object.read(max_bytes)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:  # the peer's close_notify
                return b""
            except ssl.SSLError as exc:
                if _is_eof(exc):  # a TCP end without close_notify: an end all the same
                    return b""
                raise trio.BrokenResourceError(f"TLS error: {exc}") from exc
            else:
                if len(data) < max_bytes and self._incoming.pending:
                    data = self._more(data, max_bytes)
                if self._outgoing.pending:
                    self._push_nowait()
                return data
            if self._outgoing.pending:
                self._push_nowait()  # what reading made OpenSSL write (tickets, key updates)
            raw = self.lower.receive_nowait(STREAM_RECEIVE_SIZE)
            if raw is None:
                return None
            if raw:
                self._incoming.write(raw)
            else:
                self._incoming.write_eof()

    def _more(self, data: bytes, max_bytes: int) -> bytes:
        """``data`` and the records after it that one receive brought, up to ``max_bytes``.

        ``SSLObject.read`` returns one record at a time; a peer that pipelines sends many
        per receive. Handing them over together makes one batch of them, answered by one
        write and one send, instead of one each. An error or an end in a later record
        is left for the next call, which meets it again.
        """
        chunks = [data]
        size = len(data)
        ssl_object = self._ssl
        while size < max_bytes and self._incoming.pending:
            try:
                more = ssl_object.read(max_bytes - size)
            except ssl.SSLError:
                break
            if not more:
                break
            chunks.append(more)
            size += len(more)
        return b"".join(chunks)

    def wait_readable(self) -> Awaitable[None]:
        # A plain function returning the lower transport's wait: no frame of ours while
        # an idle connection is parked. ``receive_nowait`` consumed every raw byte there
        # was, so only new ones can make it say something.
        return self.lower.wait_readable()

    # -- sending ------------------------------------------------------------------------

    def _push_nowait(self) -> bool:
        """Send the outgoing BIO's ciphertext now; False when some is left (in ``_raw``)."""
        if self._sending or self._raw:
            return False  # the sending task takes it with its next bytes, in order
        data = self._outgoing.read()
        if not data:
            return True
        try:
            sent = self.lower.send_nowait(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._broken = exc
            raise
        if sent == len(data):
            return True
        self._raw = data[sent:]
        self._start_flusher()
        return False

    def _start_flusher(self) -> None:
        if self._nursery is None:
            return  # the next send_all sends it
        self._sending = True
        self._flusher_scope = trio.CancelScope()
        self._nursery.start_soon(self._flush)

    async def _flush(self) -> None:
        """Send the ciphertext the socket did not take, waiting for room; then stop."""
        assert self._flusher_scope is not None
        try:
            with self._flusher_scope:
                while raw := self._raw + self._outgoing.read():
                    self._raw = raw
                    await self.lower.send_all(raw)
                    self._raw = b""
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._broken = exc
        finally:
            self._sending = False
            self._flusher_scope = None
            self._progress.unpark_all()

    def send_nowait(self, data: bytes | memoryview) -> int:
        """Encrypt and send what the socket takes; 0 while earlier ciphertext waits."""
        if self._broken is not None:
            raise trio.BrokenResourceError(f"peer went away: {self._broken}")
        if self._nursery is None or self._tls_closed or self._sending or self._raw:
            return 0
        size = len(data)
        if size <= TLS_RECORD_BYTES:  # a reply or a batch of them: one record
            self._encrypt(data)
            self._push_nowait()
            return size
        view = memoryview(data)
        taken = 0
        while taken < size:
            chunk = view[taken : taken + TLS_RECORD_BYTES]
            self._encrypt(chunk)
            taken += len(chunk)
            if not self._push_nowait():
                break  # the flusher sends the rest of this record; the outbox the rest
        return taken

    def _encrypt(self, data: bytes | memoryview) -> None:
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            self._broken = exc
            raise trio.BrokenResourceError(f"TLS error: {exc}") from exc

    async def wait_writable(self) -> None:
        while (self._sending or self._raw) and self._broken is None:
            await self._progress.park()
        await self.lower.wait_writable()

    async def _own_sending(self) -> None:
        """Wait until no other task sends (the flusher), then send as the one that does."""
        while self._sending:
            if self._broken is not None:
                break
            await self._progress.park()
        if self._broken is not None:
            raise trio.BrokenResourceError(f"peer went away: {self._broken}")
        self._sending = True

    async def send_all(self, data: bytes | memoryview, *, more: bool = False) -> None:
        await self._own_sending()
        try:
            if self._tls_closed:
                raise trio.ClosedResourceError("TLS was closed")
            view = memoryview(data)
            for start in range(0, len(view), TLS_RECORD_BYTES):
                self._encrypt(view[start : start + TLS_RECORD_BYTES])
                await self._send_raw(more=more or start + TLS_RECORD_BYTES < len(view))
            await self._send_raw(more=more)  # what reading queued meanwhile
        finally:
            self._sending = False
            self._progress.unpark_all()

    async def _send_raw(self, *, more: bool = False) -> None:
        """Send ``_raw`` and the outgoing BIO's ciphertext, waiting for room (sending task)."""
        while raw := self._raw + self._outgoing.read():
            self._raw = raw
            try:
                await self.lower.send_all(raw, more=more)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._broken = exc
                raise
            self._raw = b""

    # -- closing ------------------------------------------------------------------------

    async def send_eof(self) -> None:
        """close_notify, then shut our TCP side; the transport stays readable (lingering)."""
        if self._tls_closed:
            return
        with trio.move_on_after(LINGER_TIMEOUT):  # a peer not reading cannot stall this
            try:
                await self._own_sending()  # what was queued goes first
            except trio.BrokenResourceError:
                self._tls_closed = True
                return
            try:
                self._tls_closed = True
                with contextlib.suppress(ssl.SSLError):  # WantRead: we do not wait for theirs
                    self._ssl.unwrap()
                await self._send_raw()
                await self.lower.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self._sending = False
                self._progress.unpark_all()
        self._tls_closed = True

    def closing(self, reason: KickReason | CloseReason | None) -> None:
        pass  # TLS's goodbye is the close_notify of send_eof; it carries no reason

    async def aclose(self) -> None:
        if self._flusher_scope is not None:
            self._flusher_scope.cancel()
        self._raw = b""
        self._tls_closed = True
        with trio.CancelScope(shield=True):
            await self.lower.aclose()


class Refusable(Protocol):
    """A connection as the upgrade names it in its log line."""

    @property
    def peer(self) -> object: ...
    @property
    def id(self) -> str: ...


class TlsCounters(Protocol):
    """Where the upgrade counts (the worker's :class:`~trioserver.stats.Counters`)."""

    tls_handshakes: int

    @property
    def tls_failures(self) -> dict[str, int]: ...


class TlsUpgrade:
    """One TLS listener's handshake: a plaintext transport in, a :class:`TlsTransport` out."""

    __slots__ = ("context", "counters", "nursery", "timeout")

    def __init__(
        self,
        context: ssl.SSLContext,
        timeout: float,
        counters: TlsCounters,
        nursery: trio.Nursery | None = None,
    ) -> None:
        """``nursery``: where each connection's sender task runs (the worker's connection
        nursery); without one, every send waits in the caller's task."""
        self.context = context
        self.timeout = timeout
        self.counters = counters
        self.nursery = nursery

    async def __call__(
        self, transport: Transport, early: bytes, conn: Refusable
    ) -> TlsTransport | None:
        """Handshake within ``timeout``; None when refused (counted and logged, closed by
        the caller)."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        ssl_object = self.context.wrap_bio(incoming, outgoing, server_side=True)
        first_byte = early[0] if early else None
        if early:
            incoming.write(early)
        failure: TlsFailure | None = TlsFailure.TIMEOUT
        detail = f"{self.timeout:g} s"
        with trio.move_on_after(self.timeout):
            try:
                while True:
                    try:
                        ssl_object.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        pass
                    if outgoing.pending:
                        await transport.send_all(outgoing.read())
                    while (raw := transport.receive_nowait(STREAM_RECEIVE_SIZE)) is None:
                        await transport.wait_readable()
                    if raw:
                        if first_byte is None:
                            first_byte = raw[0]
                        incoming.write(raw)
                    else:
                        incoming.write_eof()
                if outgoing.pending:  # our last flight (and, in TLS 1.3, session tickets)
                    await transport.send_all(outgoing.read())
                failure = None
            except ssl.SSLError as exc:
                failure, detail = classify_failure(exc, first_byte)
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    if outgoing.pending:  # the alert that says why, if the socket takes it
                        transport.send_nowait(outgoing.read())
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                failure, detail = classify_failure(exc, first_byte)
        if failure is None:
            self.counters.tls_handshakes += 1
            certificate = None
            if self.context.verify_mode is ssl.CERT_REQUIRED:
                cert = ssl_object.getpeercert()
                certificate = PeerCertificate.from_ssl(cert) if cert else None
            return TlsTransport(
                transport, ssl_object, incoming, outgoing, certificate, self.nursery
            )
        self.counters.tls_failures[failure.value] = (
            self.counters.tls_failures.get(failure.value, 0) + 1
        )
        log.info("TLS refused %s (conn %s): it %s [%s]", conn.peer, conn.id, failure, detail)
        return None
