"""TLS as a transport: the handshake in the connection's own task, then an ``SSLStream``.

::

    upgrade = TlsUpgrade(server_tls.binary, server_tls.handshake_timeout, counters)
    tls = await upgrade(transport, early, conn)   # a TlsTransport, or None: refused (counted)

A TLS listener accepts plaintext transports like any other; the connection's
task reads its PROXY header first (HAProxy sends it before the handshake), then
hands the transport and the bytes that came after the header to the upgrade,
which stacks ``trio.SSLStream(server_side=True)`` on it and runs the handshake
under a deadline of its own. The stack, bottom up::

    Transport (raw socket, memory link) → TransportStream (+ the early bytes) → SSLStream
    → TlsTransport (the seam again, for the reader, the outbox and HTTP)

Sending: ``SSLStream.send_all`` always passes through the scheduler, so a reply
cannot leave from the reader's own call the way a socket's does. Rather than
the outbox starting a writer task per reply, each TLS connection has one sender
task (started by its first reply) that ``send_nowait`` hands replies to, up to
``SEND_BATCH_BYTES`` beyond what it is sending; past that the outbox queues and
counts them as it does for a full socket, so the send caps hold.

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
from typing import Any, Final, Protocol

import attrs
import trio

from .reasons import CloseReason, KickReason, TlsFailure
from .transport import LINGER_TIMEOUT, STREAM_RECEIVE_SIZE, Transport
from .wakeup import Wakeup

__all__ = [
    "PeerCertificate",
    "TlsFailure",
    "TlsTransport",
    "TlsUpgrade",
    "TransportStream",
    "classify_failure",
]

log = logging.getLogger("trioserver.tls")

#: Most bytes a TLS connection's sender holds beyond what it is sending: one full TLS
#: record's worth. More, and ``send_nowait`` takes nothing (the outbox then queues and
#: counts replies as for a full socket buffer).
SEND_BATCH_BYTES: Final = 16384

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


class TransportStream(trio.abc.HalfCloseableStream):
    """A transport of the seam as the ``trio.abc.Stream`` that ``SSLStream`` sits on.

    ``early`` (bytes read with the PROXY header) is handed out first.
    ``first_byte`` is the first byte the peer sent, to tell plaintext from TLS.
    With ``half_close_on_close`` set, ``aclose`` only shuts our sending side, so
    the transport stays readable for a lingering close (see the module docstring).

    A receive that finds bytes waiting returns them without a scheduler pass; the
    connection's reader already yields between batches (the seam's rule).
    """

    def __init__(self, transport: Transport, early: bytes = b"") -> None:
        self.transport = transport
        self._early = early
        self.first_byte: int | None = early[0] if early else None
        self.half_close_on_close = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = STREAM_RECEIVE_SIZE if max_bytes is None else max_bytes
        early = self._early
        if early:
            self._early = early[size:]
            return early[:size]
        transport = self.transport
        while (data := transport.receive_nowait(size)) is None:
            await transport.wait_readable()
        if data and self.first_byte is None:
            self.first_byte = data[0]
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data if not isinstance(data, bytearray) else bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_writable()

    async def send_eof(self) -> None:
        await self.transport.send_eof()

    async def aclose(self) -> None:
        if self.half_close_on_close:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.transport.send_eof()
            return
        await self.transport.aclose()


class TlsTransport:
    """The seam over a handshaken ``SSLStream`` (see the module docstring).

    ``SSLStream.send_all`` always passes through the scheduler, so nothing can be
    sent without a task. Instead of the outbox starting a writer task for every
    reply, each TLS connection gets one sender task (started by its first send, in
    ``nursery``) that sends what ``send_nowait`` handed it: "taken" means queued
    here, at most ``SEND_BATCH_BYTES`` of it (like bytes in a socket's buffer), so
    the outbox's caps still see a peer that does not read. Everything the
    connection sends (``send_all`` too) leaves through that one queue, in order.
    """

    __slots__ = (
        "_batch",
        "_batch_bytes",
        "_broken",
        "_in_flight",
        "_nursery",
        "_pending",
        "_progress",
        "_queued",
        "_sender_scope",
        "_sent",
        "_tls_closed",
        "_wakeup",
        "lingers",
        "lower",
        "peer_certificate",
        "stream",
    )

    def __init__(
        self,
        stream: trio.SSLStream[TransportStream],
        lower: TransportStream,
        peer_certificate: PeerCertificate | None = None,
        nursery: trio.Nursery | None = None,
    ) -> None:
        self.stream = stream
        self.lower = lower
        self.peer_certificate = peer_certificate
        #: Always: under TCP, unread bytes would reset the replies (as in plaintext), and
        #: on any transport the linger's first step, send_eof, says TLS's goodbye.
        self.lingers = True
        self._pending: bytes | None = None
        self._tls_closed = False
        self._nursery = nursery
        #: What the sender has yet to send, and its size; bytes queued and sent so far.
        self._batch: list[bytes] | None = None
        self._batch_bytes = 0
        self._queued = 0
        self._sent = 0
        self._in_flight = False
        self._broken: BaseException | None = None
        self._wakeup = Wakeup()
        self._progress = trio.lowlevel.ParkingLot()
        self._sender_scope: trio.CancelScope | None = None

    @property
    def socket(self) -> None:
        """None: bytes must go through TLS, never ``os.sendfile``."""
        return None

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        if self._tls_closed:
            return self.lower.transport.receive_nowait(max_bytes)
        data = self._pending
        if data is None:
            return None
        if len(data) > max_bytes:
            self._pending = data[max_bytes:]
            return data[:max_bytes]
        self._pending = None
        return data

    async def wait_readable(self) -> None:
        if self._tls_closed:
            await self.lower.transport.wait_readable()
            return
        if self._pending is not None:
            await trio.lowlevel.checkpoint()
            return
        try:
            self._pending = bytes(await self.stream.receive_some(STREAM_RECEIVE_SIZE))
        except trio.BrokenResourceError as exc:
            if not _is_eof(exc.__cause__):
                raise
            self._pending = b""  # a TCP end without close_notify: an end all the same

    def send_nowait(self, data: bytes | memoryview) -> int:
        """Hand ``data`` to the sender task; 0 when it already holds a full batch."""
        if self._broken is not None:
            raise trio.BrokenResourceError(f"peer went away: {self._broken}")
        if self._nursery is None or self._tls_closed or self._batch_bytes >= SEND_BATCH_BYTES:
            return 0
        self._enqueue(bytes(data))
        return len(data)

    def _enqueue(self, data: bytes) -> None:
        batch = self._batch
        if batch is None:
            self._batch = [data]
        else:
            batch.append(data)
        self._batch_bytes += len(data)
        self._queued += len(data)
        if self._sender_scope is None:
            assert self._nursery is not None
            self._sender_scope = trio.CancelScope()
            self._nursery.start_soon(self._send_loop)
        else:
            self._wakeup.wake()

    async def _send_loop(self) -> None:
        """The one task that sends: whatever was queued, in order, until closed."""
        assert self._sender_scope is not None
        stream = self.stream
        with self._sender_scope:
            while True:
                while batch := self._batch:
                    self._batch = None
                    self._batch_bytes = 0
                    data = batch[0] if len(batch) == 1 else b"".join(batch)
                    self._in_flight = True
                    try:
                        await stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        self._broken = exc
                        self._progress.unpark_all()
                        return
                    finally:
                        self._in_flight = False
                    self._sent += len(data)
                    self._progress.unpark_all()
                await self._wakeup.wait()

    async def wait_writable(self) -> None:
        while self._batch_bytes >= SEND_BATCH_BYTES and self._broken is None:
            await self._progress.park()
        await self.stream.wait_send_all_might_not_block()

    async def send_all(self, data: bytes | memoryview, *, more: bool = False) -> None:
        if self._broken is not None:
            raise trio.BrokenResourceError(f"peer went away: {self._broken}")
        if self._nursery is None or (self._batch is None and not self._in_flight):
            await self.stream.send_all(data)  # nothing queued: no need to go round the sender
            return
        self._enqueue(bytes(data))
        target = self._queued
        while self._sent < target:
            if self._broken is not None:
                raise trio.BrokenResourceError(f"peer went away: {self._broken}")
            await self._progress.park()

    async def send_eof(self) -> None:
        """close_notify, then shut our TCP side; the transport stays readable (lingering)."""
        if self._tls_closed:
            return
        with trio.move_on_after(LINGER_TIMEOUT):  # a peer not reading cannot stall this
            while self._batch is not None or self._in_flight:  # what was queued goes first
                if self._broken is not None:
                    break
                await self._progress.park()
            self._stop_sender()
            self._tls_closed = True
            self.lower.half_close_on_close = True
            await self.stream.aclose()
        self._tls_closed = True
        self.lower.half_close_on_close = False

    def closing(self, reason: KickReason | CloseReason | None) -> None:
        pass

    def _stop_sender(self) -> None:
        if self._sender_scope is not None:
            self._sender_scope.cancel()

    async def aclose(self) -> None:
        self._stop_sender()
        self._batch = None
        with trio.CancelScope(shield=True):
            self.lower.half_close_on_close = False
            if self._tls_closed:
                await self.lower.transport.aclose()
            else:
                await trio.aclose_forcefully(self.stream)


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
        lower = TransportStream(transport, early)
        stream = trio.SSLStream(lower, self.context, server_side=True)
        failure: TlsFailure | None = TlsFailure.TIMEOUT
        detail = f"{self.timeout:g} s"
        with trio.move_on_after(self.timeout):
            try:
                await stream.do_handshake()
                failure = None
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                failure, detail = classify_failure(exc, lower.first_byte)
        if failure is None:
            self.counters.tls_handshakes += 1
            certificate = None
            if self.context.verify_mode is ssl.CERT_REQUIRED:
                cert = stream.getpeercert()
                certificate = PeerCertificate.from_ssl(cert) if cert else None
            return TlsTransport(stream, lower, certificate, self.nursery)
        self.counters.tls_failures[failure.value] = (
            self.counters.tls_failures.get(failure.value, 0) + 1
        )
        log.info("TLS refused %s (conn %s): it %s [%s]", conn.peer, conn.id, failure, detail)
        return None
