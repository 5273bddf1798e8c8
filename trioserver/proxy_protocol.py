"""Sans-I/O PROXY protocol v1 and v2: who the client behind a load balancer really is.

A balancer in TCP mode hides its clients: every connection the worker accepts comes
from the balancer. With the PROXY protocol (HAProxy's ``proxy-protocol.txt``) the
balancer opens each connection with a header naming the client, and this module
reads it. Like the framer it imports neither trio nor socket::

    parser = ProxyParser(versions=(1, 2))
    parser.receive_data(chunk)              # b"" means the peer sent EOF
    header = parser.next_event()            # a ProxyHeader, or NEED_PROXY_DATA
    rest = parser.trailing_data             # the application protocol's first bytes

A peer's mistake raises a :class:`ProxyProtocolError` subclass (missing, malformed,
truncated, oversized header) and the parser stays broken: the connection cannot
continue, since nothing after a bad header can be trusted to be the application's.
Misusing the parser raises :class:`LocalProxyError`.

:func:`read_proxy_header` is the part of the worker's adapter that needs no trio:
it refuses untrusted sources, then pulls bytes through a ``receive`` callable until
the header is complete. The caller supplies the receive and the timeout.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import TYPE_CHECKING, Final, TypeAlias

import attrs

from .errors import LocalProtocolError, RemoteProtocolError
from .peer import Peer

if TYPE_CHECKING:
    from .config import ServerSettings

__all__ = [
    "DEFAULT_MAX_V2_LENGTH",
    "MODES",
    "NEED_PROXY_DATA",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "LocalProxyError",
    "MalformedProxyHeader",
    "MissingProxyHeader",
    "NeedProxyData",
    "OversizedProxyHeader",
    "ProxyAddress",
    "ProxyCommand",
    "ProxyFamily",
    "ProxyHeader",
    "ProxyParser",
    "ProxyPolicy",
    "ProxyProtocolError",
    "ProxyTransport",
    "RefusedProxyFamily",
    "Tlv",
    "TruncatedProxyHeader",
    "UntrustedProxySource",
    "parse_proxy_header",
    "read_proxy_header",
]


class NeedProxyData(enum.Enum):
    """The type of the :data:`NEED_PROXY_DATA` sentinel (this parser's own)."""

    NEED_PROXY_DATA = "NEED_PROXY_DATA"

    def __repr__(self) -> str:
        return "NEED_PROXY_DATA"


#: What :meth:`ProxyParser.next_event` returns while the header is incomplete.
NEED_PROXY_DATA: Final = NeedProxyData.NEED_PROXY_DATA

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The longest v1 line, CRLF included (the spec's worst case: TCP6 with full addresses).
V1_MAX_LENGTH: Final = 107
_V1_PREFIX: Final = b"PROXY "
#: The 12 bytes every v2 header starts with; no v1 header or protocol greeting does.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED: Final = 16  # signature, version/command, family/transport, u16 length
#: Most bytes a v2 header may carry after its fixed 16 (addresses plus TLVs).
#: A UNIX address block is 216 bytes; HAProxy's TLVs (ALPN, authority, unique id,
#: SSL details) fit well within 2 KiB. The wire allows 64 KiB; nobody needs it.
DEFAULT_MAX_V2_LENGTH: Final = 2048
_V2_ABSOLUTE_MAX: Final = 0xFFFF

#: ``[server] proxy_protocol`` → the versions a listener accepts (None: PROXY off).
MODES: Final[dict[str, frozenset[int] | None]] = {
    "off": None,
    "v1": frozenset({1}),
    "v2": frozenset({2}),
    "any": frozenset({1, 2}),
}


# -- errors -------------------------------------------------------------------------------


class ProxyProtocolError(RemoteProtocolError):
    """The peer did not open with a valid, acceptable PROXY header: close the connection."""


class MissingProxyHeader(ProxyProtocolError):
    """The connection did not start with a PROXY header this listener accepts."""


class MalformedProxyHeader(ProxyProtocolError):
    """The header started like a PROXY header but breaks the format."""


class TruncatedProxyHeader(ProxyProtocolError):
    """The peer sent EOF before the header was complete."""

    def __init__(self, pending: int) -> None:
        super().__init__(f"peer sent EOF after {pending} bytes of an unfinished PROXY header")
        self.pending = pending


class OversizedProxyHeader(ProxyProtocolError):
    """The header is longer than allowed (v1: 107 bytes; v2: the parser's length cap)."""

    def __init__(self, version: int, length: int, maximum: int) -> None:
        super().__init__(
            f"PROXY v{version} header of {length}+ bytes is longer than the {maximum} allowed"
        )
        self.version = version
        self.length = length
        self.maximum = maximum


class UntrustedProxySource(ProxyProtocolError):
    """A connection to a PROXY listener came from an address not in ``proxy_trusted``."""

    def __init__(self, peer: str) -> None:
        super().__init__(
            f"{peer} is not a trusted PROXY source (add its network to server.proxy_trusted "
            "if it is your load balancer)"
        )
        self.peer = peer


class RefusedProxyFamily(ProxyProtocolError):
    """A PROXY header for a client on a UNIX socket, and ``server.proxy_unix`` refuses them."""

    def __init__(self) -> None:
        super().__init__(
            "PROXY header for a client on a UNIX socket refused (server.proxy_unix = 'refuse')"
        )


class LocalProxyError(LocalProtocolError):
    """We misused the parser (our bug, not the peer's)."""


# -- events -------------------------------------------------------------------------------


class ProxyCommand(enum.Enum):
    """PROXY: relayed for a client. LOCAL: the balancer's own connection (a health check)."""

    PROXY = "proxy"
    LOCAL = "local"


class ProxyFamily(enum.Enum):
    INET = "inet"
    INET6 = "inet6"
    UNIX = "unix"
    #: v1 ``UNKNOWN`` or v2 ``AF_UNSPEC``: no address given, use the socket's.
    UNSPEC = "unspec"


class ProxyTransport(enum.Enum):
    STREAM = "stream"
    DGRAM = "dgram"
    UNSPEC = "unspec"


@attrs.frozen
class ProxyAddress:
    """One end of the client's connection; ``port`` is None for a UNIX socket path."""

    host: str
    port: int | None

    def __str__(self) -> str:
        if self.port is None:
            return f"unix:{self.host}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@attrs.frozen
class Tlv:
    """A v2 type-length-value extension, passed on unread (CRC32C is not checked)."""

    type: int
    value: bytes


@attrs.frozen
class ProxyHeader:
    """A complete, valid PROXY header."""

    version: int
    command: ProxyCommand
    family: ProxyFamily
    transport: ProxyTransport
    source: ProxyAddress | None = None
    destination: ProxyAddress | None = None
    tlvs: tuple[Tlv, ...] = ()
    #: The header's length on the wire.
    length: int = 0

    @property
    def peer(self) -> Peer | None:
        """The client the header names, or None: use the socket's peer.

        A UNIX-socket client has no network address: its path (zero bytes for the
        usual unbound client socket, which is valid) could key no per-network rule,
        and an empty or made-up path would be an identity of the sender's choosing.
        The spec lets a receiver fall back to the UNSPEC handling for a family it
        does not support (section 2.2): keep the connection's own address, the
        balancer's, as nginx and HAProxy do for families they do not take addresses
        from. ``source`` still holds the path, for logs.
        """
        if (
            self.command is ProxyCommand.LOCAL
            or self.source is None
            or self.family is ProxyFamily.UNIX
        ):
            return None
        return Peer(self.source.host, self.source.port)


# -- the parser ----------------------------------------------------------------------------


class ProxyParser:
    """Incremental parser for one connection's PROXY header.

    ``versions`` is what the listener accepts ({1}, {2} or both); ``max_v2_length``
    caps the v2 length field, checked before any of that length is buffered.
    """

    __slots__ = ("_buf", "_eof", "_error", "_header", "_max_v2", "_versions")

    def __init__(
        self,
        versions: Collection[int] = (1, 2),
        max_v2_length: int = DEFAULT_MAX_V2_LENGTH,
    ) -> None:
        chosen = frozenset(versions)
        if not chosen or not chosen <= {1, 2}:
            raise LocalProxyError(f"versions={versions!r} must be a non-empty subset of {{1, 2}}")
        if not 0 <= max_v2_length <= _V2_ABSOLUTE_MAX:
            raise LocalProxyError(f"max_v2_length={max_v2_length!r} must be in 0..65535")
        self._versions = chosen
        self._max_v2 = max_v2_length
        self._buf = bytearray()
        self._eof = False
        self._error: ProxyProtocolError | None = None
        self._header: ProxyHeader | None = None

    @property
    def error(self) -> ProxyProtocolError | None:
        """The sticky error, once the peer sent something unacceptable."""
        return self._error

    @property
    def header(self) -> ProxyHeader | None:
        """The header, once complete."""
        return self._header

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the header: they belong to the application protocol."""
        if self._header is None:
            return b""
        return bytes(self._buf[self._header.length :])

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the peer; ``b""`` means EOF."""
        if self._eof:
            if data:
                raise LocalProxyError("receive_data() called with data after EOF")
            return
        if not data:
            self._eof = True
            return
        self._buf += data

    def next_event(self) -> ProxyHeader | NeedProxyData:
        """The header once complete (the same one on every later call), else NEED_PROXY_DATA.

        Raises a :class:`ProxyProtocolError` (and the same one forever after) when
        the bytes cannot be an acceptable header.
        """
        if self._error is not None:
            raise self._error
        if self._header is not None:
            return self._header
        try:
            header = self._parse()
        except ProxyProtocolError as exc:
            self._error = exc
            raise
        if header is not NEED_PROXY_DATA:
            self._header = header
        return header

    def _parse(self) -> ProxyHeader | NeedProxyData:
        buf = self._buf
        if not buf:
            if self._eof:
                raise MissingProxyHeader("peer closed the connection before sending a PROXY header")
            return NEED_PROXY_DATA
        if buf[0] == _V1_PREFIX[0] and 1 in self._versions:
            return self._parse_v1()
        if buf[0] == V2_SIGNATURE[0] and 2 in self._versions:
            return self._parse_v2()
        raise self._missing()

    def _missing(self) -> MissingProxyHeader:
        buf = bytes(self._buf[:16])
        accepted = " or ".join(f"v{v}" for v in sorted(self._versions))
        if buf.startswith(_V1_PREFIX[: len(buf)]):
            seen = "a PROXY v1 header"
        elif buf.startswith(V2_SIGNATURE[: len(buf)]):
            seen = "a PROXY v2 header"
        else:
            seen = f"{buf!r}..., not a PROXY header"
        return MissingProxyHeader(
            f"connection started with {seen}; this listener accepts PROXY {accepted} only "
            "(is the balancer set to send it, e.g. HAProxy send-proxy-v2? is a client "
            "connecting to a PROXY listener directly?)"
        )

    # -- v1: "PROXY TCP4 1.2.3.4 5.6.7.8 1234 80\r\n" ------------------------------------

    def _parse_v1(self) -> ProxyHeader | NeedProxyData:
        buf = self._buf
        have = min(len(buf), len(_V1_PREFIX))
        if buf[:have] != _V1_PREFIX[:have]:
            raise self._missing()
        end = buf.find(b"\r\n", 0, V1_MAX_LENGTH)
        if end < 0:
            if buf.find(b"\n", 0, V1_MAX_LENGTH) >= 0:
                raise MalformedProxyHeader("PROXY v1 line ends in LF without CR")
            if len(buf) >= V1_MAX_LENGTH:
                raise OversizedProxyHeader(1, len(buf), V1_MAX_LENGTH)
            if self._eof:
                raise TruncatedProxyHeader(len(buf))
            return NEED_PROXY_DATA
        line = bytes(buf[:end])
        if any(not 0x20 <= b <= 0x7E for b in line):
            raise MalformedProxyHeader(f"PROXY v1 line holds a non-printable byte: {line!r}")
        parts = line.decode("ascii").split(" ")
        length = end + 2
        protocol = parts[1] if len(parts) > 1 else ""
        if protocol == "UNKNOWN":  # the rest of the line is to be ignored (spec 2.1)
            return ProxyHeader(
                1, ProxyCommand.PROXY, ProxyFamily.UNSPEC, ProxyTransport.UNSPEC, length=length
            )
        family = _V1_FAMILIES.get(protocol)
        if family is None:
            raise MalformedProxyHeader(f"PROXY v1 protocol {protocol!r} is not TCP4, TCP6, UNKNOWN")
        if len(parts) != 6:
            raise MalformedProxyHeader(
                f"PROXY v1 {protocol} needs 4 fields after it, separated by one space: {line!r}"
            )
        source = _v1_address(family, parts[2], parts[4])
        destination = _v1_address(family, parts[3], parts[5])
        return ProxyHeader(
            1, ProxyCommand.PROXY, family, ProxyTransport.STREAM, source, destination, (), length
        )

    # -- v2: signature, ver/cmd, fam/transport, length, addresses, TLVs -------------------

    def _parse_v2(self) -> ProxyHeader | NeedProxyData:
        buf = self._buf
        have = min(len(buf), len(V2_SIGNATURE))
        if buf[:have] != V2_SIGNATURE[:have]:
            raise self._missing()
        if len(buf) < _V2_FIXED:
            if self._eof:
                raise TruncatedProxyHeader(len(buf))
            return NEED_PROXY_DATA
        version, command_bits = buf[12] >> 4, buf[12] & 0xF
        if version != 2:
            raise MalformedProxyHeader(f"PROXY v2 signature with version nibble {version}, not 2")
        command = _V2_COMMANDS.get(command_bits)
        if command is None:
            raise MalformedProxyHeader(f"PROXY v2 command {command_bits} is not LOCAL or PROXY")
        family = _V2_FAMILIES.get(buf[13] >> 4)
        transport = _V2_TRANSPORTS.get(buf[13] & 0xF)
        if family is None or transport is None:
            raise MalformedProxyHeader(f"PROXY v2 family/transport byte 0x{buf[13]:02x} is invalid")
        body_length = int.from_bytes(buf[14:16], "big")
        if body_length > self._max_v2:
            raise OversizedProxyHeader(2, _V2_FIXED + body_length, _V2_FIXED + self._max_v2)
        length = _V2_FIXED + body_length
        if len(buf) < length:
            if self._eof:
                raise TruncatedProxyHeader(len(buf))
            return NEED_PROXY_DATA
        body = bytes(buf[_V2_FIXED:length])
        if command is ProxyCommand.LOCAL:  # the balancer speaking for itself: ignore the rest
            return ProxyHeader(2, command, family, transport, length=length)
        size = _V2_ADDRESS_SIZES[family]
        if body_length < size:
            raise MalformedProxyHeader(
                f"PROXY v2 {family.value} header has {body_length} bytes of addresses, needs {size}"
            )
        source, destination = _v2_addresses(family, body[:size])
        tlvs = tuple(_v2_tlvs(body[size:]))
        return ProxyHeader(2, command, family, transport, source, destination, tlvs, length)


_V1_FAMILIES: Final = {"TCP4": ProxyFamily.INET, "TCP6": ProxyFamily.INET6}
_V2_COMMANDS: Final = {0x0: ProxyCommand.LOCAL, 0x1: ProxyCommand.PROXY}
_V2_FAMILIES: Final = {
    0x0: ProxyFamily.UNSPEC,
    0x1: ProxyFamily.INET,
    0x2: ProxyFamily.INET6,
    0x3: ProxyFamily.UNIX,
}
_V2_TRANSPORTS: Final = {
    0x0: ProxyTransport.UNSPEC,
    0x1: ProxyTransport.STREAM,
    0x2: ProxyTransport.DGRAM,
}
_V2_ADDRESS_SIZES: Final = {
    ProxyFamily.UNSPEC: 0,
    ProxyFamily.INET: 12,
    ProxyFamily.INET6: 36,
    ProxyFamily.UNIX: 216,
}


def _host(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The address as the worker logs it; an IPv4-mapped IPv6 address as plain IPv4,
    so one client is one rate-limit key whichever way the balancer listens."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _v1_address(family: ProxyFamily, host: str, port: str) -> ProxyAddress:
    try:
        if family is ProxyFamily.INET:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(host)
        else:
            if "%" in host:
                raise ValueError("scope ids are not allowed")
            ip = ipaddress.IPv6Address(host)
    except ValueError as exc:
        raise MalformedProxyHeader(
            f"PROXY v1 address {host!r} is not {family.value}: {exc}"
        ) from None
    if not (port.isdigit() and len(port) <= 5 and int(port) <= 0xFFFF):
        raise MalformedProxyHeader(f"PROXY v1 port {port!r} is not a number in 0..65535")
    return ProxyAddress(_host(ip), int(port))


def _v2_addresses(
    family: ProxyFamily, block: bytes
) -> tuple[ProxyAddress, ProxyAddress] | tuple[None, None]:
    if family is ProxyFamily.INET:
        return (
            ProxyAddress(_host(ipaddress.IPv4Address(block[0:4])), int.from_bytes(block[8:10])),
            ProxyAddress(_host(ipaddress.IPv4Address(block[4:8])), int.from_bytes(block[10:12])),
        )
    if family is ProxyFamily.INET6:
        return (
            ProxyAddress(_host(ipaddress.IPv6Address(block[0:16])), int.from_bytes(block[32:34])),
            ProxyAddress(_host(ipaddress.IPv6Address(block[16:32])), int.from_bytes(block[34:36])),
        )
    if family is ProxyFamily.UNIX:
        return ProxyAddress(_unix_path(block[:108]), None), ProxyAddress(
            _unix_path(block[108:216]), None
        )
    return None, None  # UNSPEC: the receiver must ignore any address bytes (spec 2.2)


def _unix_path(raw: bytes) -> str:
    return raw.partition(b"\0")[0].decode("utf-8", "backslashreplace")


def _v2_tlvs(data: bytes) -> Iterable[Tlv]:
    pos = 0
    while pos < len(data):
        if len(data) - pos < 3:
            raise MalformedProxyHeader(f"PROXY v2 TLV header cut short at offset {pos}")
        kind, size = data[pos], int.from_bytes(data[pos + 1 : pos + 3])
        if pos + 3 + size > len(data):
            raise MalformedProxyHeader(
                f"PROXY v2 TLV 0x{kind:02x} announces {size} bytes, {len(data) - pos - 3} remain"
            )
        yield Tlv(kind, data[pos + 3 : pos + 3 + size])
        pos += 3 + size


def parse_proxy_header(
    data: bytes, versions: Collection[int] = (1, 2), max_v2_length: int = DEFAULT_MAX_V2_LENGTH
) -> tuple[ProxyHeader, bytes]:
    """Parse a header from bytes known to be all there is: (header, the bytes after it)."""
    parser = ProxyParser(versions, max_v2_length)
    parser.receive_data(data)
    parser.receive_data(b"")
    header = parser.next_event()
    assert header is not NEED_PROXY_DATA  # at EOF the parser decides or raises
    return header, parser.trailing_data


# -- policy and the I/O-free half of the worker's adapter ---------------------------------


@attrs.frozen
class ProxyPolicy:
    """What a PROXY listener demands: header versions, trusted sources, a time limit."""

    versions: frozenset[int]
    trusted: tuple[Network, ...]
    timeout: float = 5.0
    max_v2_length: int = DEFAULT_MAX_V2_LENGTH
    #: UNIX-family headers: ``"balancer"`` keeps the socket's peer, ``"refuse"`` closes.
    unix: str = "balancer"

    @classmethod
    def from_settings(cls, server: ServerSettings) -> ProxyPolicy | None:
        """The policy ``[server]`` asks for, or None when PROXY is off."""
        versions = MODES[server.proxy_protocol]
        if versions is None:
            return None
        return cls(
            versions, tuple(server.proxy_trusted), server.proxy_timeout, unix=server.proxy_unix
        )

    def trusts(self, peer: Peer) -> bool:
        """True when ``peer`` (the socket's other end) may send a PROXY header."""
        ip = peer.ip
        return ip is not None and any(ip in network for network in self.trusted)

    def parser(self) -> ProxyParser:
        return ProxyParser(self.versions, self.max_v2_length)


async def read_proxy_header(
    receive: Callable[[], Awaitable[bytes | bytearray]],
    policy: ProxyPolicy,
    socket_peer: Peer,
) -> tuple[Peer, bytes]:
    """Read one connection's PROXY header: (the client, the bytes after it).

    An untrusted ``socket_peer`` is refused before anything is read. ``receive``
    returns the next bytes (``b""`` at EOF). A LOCAL header (the balancer's
    health check) keeps ``socket_peer``, and so does a header for a UNIX-socket client
    unless ``policy.unix`` refuses it. No time limit here: the caller sets one.
    """
    if not policy.trusts(socket_peer):
        raise UntrustedProxySource(str(socket_peer))
    parser = policy.parser()
    while (header := parser.next_event()) is NEED_PROXY_DATA:
        parser.receive_data(await receive())
    if (
        header.family is ProxyFamily.UNIX
        and header.command is ProxyCommand.PROXY
        and policy.unix == "refuse"
    ):
        raise RefusedProxyFamily()
    return header.peer or socket_peer, parser.trailing_data
