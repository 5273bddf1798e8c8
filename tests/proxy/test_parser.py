"""The sans-I/O PROXY parser: every case fed whole, byte by byte and with trailing bytes;
malformed, truncated and oversized headers; sticky errors; Hypothesis round trips and fuzz."""

from __future__ import annotations

import ipaddress
import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioserver.proxy_protocol import (
    NEED_PROXY_DATA,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    LocalProxyError,
    MalformedProxyHeader,
    MissingProxyHeader,
    OversizedProxyHeader,
    ProxyAddress,
    ProxyCommand,
    ProxyFamily,
    ProxyHeader,
    ProxyParser,
    ProxyProtocolError,
    ProxyTransport,
    Tlv,
    TruncatedProxyHeader,
    parse_proxy_header,
)

from .headers import v2_header, v2_inet

A = ProxyAddress


def feed(data: bytes, chunk: int, *, eof: bool = True, **kw: object) -> tuple[object, bytes]:
    """Feed ``data`` ``chunk`` bytes at a time (then EOF): (the header or the error, trailing)."""
    parser = ProxyParser(**kw)  # type: ignore[arg-type]
    result: object = NEED_PROXY_DATA
    try:
        for i in range(0, len(data), chunk):
            parser.receive_data(data[i : i + chunk])
            result = parser.next_event()
            if result is not NEED_PROXY_DATA:
                # The rest is the application's: the parser keeps it as trailing data.
                parser.receive_data(data[i + chunk :])
                break
        else:
            if eof:
                parser.receive_data(b"")
                result = parser.next_event()
    except ProxyProtocolError as exc:
        return exc, b""
    return result, parser.trailing_data


def all_ways(data: bytes, **kw: object) -> list[tuple[object, bytes]]:
    """The outcome fed whole, byte by byte, and in 3-byte chunks."""
    return [feed(data, max(len(data), 1), **kw), feed(data, 1, **kw), feed(data, 3, **kw)]


IPV6_MAX = ":".join(["ffff"] * 8)

GOOD = [
    (
        "v1 tcp4",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 10000\r\n",
        ProxyHeader(
            1,
            ProxyCommand.PROXY,
            ProxyFamily.INET,
            ProxyTransport.STREAM,
            A("192.0.2.10", 56324),
            A("198.51.100.1", 10000),
            (),
            48,
        ),
    ),
    (
        "v1 tcp6",
        b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n",
        ProxyHeader(
            1,
            ProxyCommand.PROXY,
            ProxyFamily.INET6,
            ProxyTransport.STREAM,
            A("2001:db8::1", 1),
            A("2001:db8::2", 65535),
            (),
            44,
        ),
    ),
    (
        "v1 tcp6 mapped v4 is reported as v4",
        b"PROXY TCP6 ::ffff:192.0.2.7 ::1 5 6\r\n",
        ProxyHeader(
            1,
            ProxyCommand.PROXY,
            ProxyFamily.INET6,
            ProxyTransport.STREAM,
            A("192.0.2.7", 5),
            A("::1", 6),
            (),
            37,
        ),
    ),
    (
        "v1 unknown",
        b"PROXY UNKNOWN\r\n",
        ProxyHeader(1, ProxyCommand.PROXY, ProxyFamily.UNSPEC, ProxyTransport.UNSPEC, length=15),
    ),
    (
        "v1 unknown at exactly 107 bytes",
        f"PROXY UNKNOWN {IPV6_MAX} {IPV6_MAX} 65535 65535\r\n".encode(),
        ProxyHeader(1, ProxyCommand.PROXY, ProxyFamily.UNSPEC, ProxyTransport.UNSPEC, length=107),
    ),
    (
        "v2 inet",
        v2_inet("203.0.113.5", 40000, "10.0.0.1", 10000),
        ProxyHeader(
            2,
            ProxyCommand.PROXY,
            ProxyFamily.INET,
            ProxyTransport.STREAM,
            A("203.0.113.5", 40000),
            A("10.0.0.1", 10000),
            (),
            28,
        ),
    ),
    (
        "v2 inet6 with TLVs",
        v2_header(
            0x21,
            0x21,
            ipaddress.IPv6Address("2001:db8::5").packed
            + ipaddress.IPv6Address("2001:db8::6").packed
            + struct.pack(">HH", 7, 8)
            + b"\x01\x00\x02h2"  # ALPN
            + b"\x04\x00\x00",  # NOOP, empty
        ),
        ProxyHeader(
            2,
            ProxyCommand.PROXY,
            ProxyFamily.INET6,
            ProxyTransport.STREAM,
            A("2001:db8::5", 7),
            A("2001:db8::6", 8),
            (Tlv(1, b"h2"), Tlv(4, b"")),
            16 + 36 + 8,
        ),
    ),
    (
        "v2 unix",
        v2_header(0x21, 0x31, b"/run/c.sock".ljust(108, b"\0") + b"/run/s.sock".ljust(108, b"\0")),
        ProxyHeader(
            2,
            ProxyCommand.PROXY,
            ProxyFamily.UNIX,
            ProxyTransport.STREAM,
            A("/run/c.sock", None),
            A("/run/s.sock", None),
            (),
            16 + 216,
        ),
    ),
    (
        "v2 local (a health check), address bytes ignored",
        v2_header(0x20, 0x00, b"\xff" * 5),
        ProxyHeader(2, ProxyCommand.LOCAL, ProxyFamily.UNSPEC, ProxyTransport.UNSPEC, length=21),
    ),
    (
        "v2 proxy unspec: addresses ignored",
        v2_header(0x21, 0x00, b""),
        ProxyHeader(2, ProxyCommand.PROXY, ProxyFamily.UNSPEC, ProxyTransport.UNSPEC, length=16),
    ),
    (
        "v2 dgram inet",
        v2_header(0x21, 0x12, bytes(12)),
        ProxyHeader(
            2,
            ProxyCommand.PROXY,
            ProxyFamily.INET,
            ProxyTransport.DGRAM,
            A("0.0.0.0", 0),
            A("0.0.0.0", 0),
            (),
            28,
        ),
    ),
]


@pytest.mark.parametrize("trailing", [b"", b"\x00\x08\x00\x00\x00\x00\x00\x00", b"PROXY again"])
@pytest.mark.parametrize(("name", "data", "expected"), GOOD, ids=[c[0] for c in GOOD])
def test_good_headers_every_way(
    name: str, data: bytes, expected: ProxyHeader, trailing: bytes
) -> None:
    for result, rest in all_ways(data + trailing):
        assert result == expected
        assert rest == trailing


def test_peer_strings() -> None:
    assert str(GOOD[0][2].peer) == "192.0.2.10:56324"
    assert str(GOOD[1][2].peer) == "[2001:db8::1]:1"
    assert GOOD[3][2].peer is None  # UNKNOWN: keep the socket's address
    assert GOOD[7][2].peer is None  # a UNIX-socket client: keep the socket's (balancer's)
    assert GOOD[8][2].peer is None  # LOCAL


def test_header_is_returned_once_complete_and_trailing_grows() -> None:
    parser = ProxyParser()
    parser.receive_data(b"PROXY UNKNOWN\r\nab")
    header = parser.next_event()
    assert isinstance(header, ProxyHeader)
    assert parser.next_event() is header
    parser.receive_data(b"cd")
    assert parser.trailing_data == b"abcd"
    assert parser.header is header


BAD = [
    ("not proxy at all", b"GET / HTTP/1.1\r\n\r\n", MissingProxyHeader),
    ("binary ping", b"\x00\x08\x00\x00\x00\x00\x00\x00", MissingProxyHeader),
    ("lowercase", b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", MissingProxyHeader),
    ("almost v1", b"PROXZ TCP4\r\n", MissingProxyHeader),
    ("almost v2", b"\r\n\r\n\x00\r\nQUIX\n" + bytes(8), MissingProxyHeader),
    ("v1 bare LF", b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", MalformedProxyHeader),
    ("v1 bad protocol", b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", MalformedProxyHeader),
    ("v1 no protocol", b"PROXY \r\n", MalformedProxyHeader),
    ("v1 too few fields", b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", MalformedProxyHeader),
    ("v1 too many fields", b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n", MalformedProxyHeader),
    ("v1 double space", b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n", MalformedProxyHeader),
    ("v1 v6 in tcp4", b"PROXY TCP4 ::1 ::1 1 2\r\n", MalformedProxyHeader),
    ("v1 v4 in tcp6", b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n", MalformedProxyHeader),
    ("v1 v6 scope id", b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", MalformedProxyHeader),
    ("v1 octet > 255", b"PROXY TCP4 1.2.3.256 1.2.3.4 1 2\r\n", MalformedProxyHeader),
    ("v1 hostname", b"PROXY TCP4 example.com 1.2.3.4 1 2\r\n", MalformedProxyHeader),
    ("v1 port too big", b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n", MalformedProxyHeader),
    ("v1 port sign", b"PROXY TCP4 1.2.3.4 1.2.3.4 +1 2\r\n", MalformedProxyHeader),
    ("v1 port empty", b"PROXY TCP4 1.2.3.4 1.2.3.4  2\r\n", MalformedProxyHeader),
    ("v1 non-ascii", b"PROXY TCP4 1.2.3.4 1.2.3.4 1 \xd9\xa1\r\n", MalformedProxyHeader),
    ("v1 control byte", b"PROXY UNKNOWN \x00\r\n", MalformedProxyHeader),
    ("v2 version 1", v2_header(0x11, 0x11, bytes(12)), MalformedProxyHeader),
    ("v2 version 3", v2_header(0x31, 0x11, bytes(12)), MalformedProxyHeader),
    ("v2 command 2", v2_header(0x22, 0x11, bytes(12)), MalformedProxyHeader),
    ("v2 family 4", v2_header(0x21, 0x41, bytes(12)), MalformedProxyHeader),
    ("v2 transport 3", v2_header(0x21, 0x13, bytes(12)), MalformedProxyHeader),
    ("v2 inet short", v2_header(0x21, 0x11, bytes(11)), MalformedProxyHeader),
    ("v2 inet6 short", v2_header(0x21, 0x21, bytes(35)), MalformedProxyHeader),
    ("v2 unix short", v2_header(0x21, 0x31, bytes(215)), MalformedProxyHeader),
    ("v2 tlv cut", v2_header(0x21, 0x11, bytes(12) + b"\x01\x00"), MalformedProxyHeader),
    ("v2 tlv overrun", v2_header(0x21, 0x11, bytes(12) + b"\x01\x00\x05abc"), MalformedProxyHeader),
]


@pytest.mark.parametrize(("name", "data", "error"), BAD, ids=[c[0] for c in BAD])
def test_bad_headers_every_way(name: str, data: bytes, error: type[Exception]) -> None:
    for result, _ in all_ways(data + b"trailing application bytes"):
        assert type(result) is error, result


@pytest.mark.parametrize(("name", "data", "expected"), GOOD, ids=[c[0] for c in GOOD])
def test_every_truncation_is_truncated(name: str, data: bytes, expected: ProxyHeader) -> None:
    """EOF anywhere inside a good header: truncated (or missing, before any byte)."""
    for cut in range(len(data)):
        for result, _ in all_ways(data[:cut]):
            if cut == 0:
                assert type(result) is MissingProxyHeader
            else:
                assert type(result) is TruncatedProxyHeader, (cut, result)
                assert result.pending == cut


@pytest.mark.parametrize(("name", "data", "expected"), GOOD, ids=[c[0] for c in GOOD])
def test_cut_short_without_eof_needs_data(name: str, data: bytes, expected: ProxyHeader) -> None:
    for cut in range(len(data)):
        result, rest = feed(data[:cut], 1, eof=False)
        assert result is NEED_PROXY_DATA
        assert rest == b""


def test_v1_longer_than_107_bytes_is_oversized_without_waiting_for_crlf() -> None:
    line = f"PROXY UNKNOWN {IPV6_MAX} {IPV6_MAX} 65535 655355\r\n".encode()
    assert len(line) == V1_MAX_LENGTH + 1
    for result, _ in all_ways(line):
        assert type(result) is OversizedProxyHeader
    # No CRLF ever: decided at 107 bytes, not by EOF.
    parser = ProxyParser()
    parser.receive_data(b"PROXY " + b"A" * (V1_MAX_LENGTH - 7))
    assert parser.next_event() is NEED_PROXY_DATA
    parser.receive_data(b"A")
    with pytest.raises(OversizedProxyHeader) as caught:
        parser.next_event()
    assert caught.value.maximum == V1_MAX_LENGTH


def test_v2_length_cap_is_checked_before_buffering_the_body() -> None:
    parser = ProxyParser(max_v2_length=100)
    parser.receive_data(V2_SIGNATURE + b"\x21\x11" + struct.pack(">H", 101))
    with pytest.raises(OversizedProxyHeader) as caught:
        parser.next_event()
    assert (caught.value.version, caught.value.length, caught.value.maximum) == (2, 117, 116)
    ok, rest = parse_proxy_header(v2_header(0x20, 0x00, bytes(100)), max_v2_length=100)
    assert ok.length == 116 and rest == b""


def test_errors_are_sticky() -> None:
    parser = ProxyParser()
    parser.receive_data(b"PROXY TCP9 \r\n")
    with pytest.raises(MalformedProxyHeader) as first:
        parser.next_event()
    parser.receive_data(b"more")
    with pytest.raises(MalformedProxyHeader) as second:
        parser.next_event()
    assert second.value is first.value
    assert parser.error is first.value
    assert parser.trailing_data == b""


@pytest.mark.parametrize(
    ("versions", "data", "word"),
    [
        ((1,), v2_inet("1.2.3.4", 1, "5.6.7.8", 2), "v2 header"),
        ((2,), b"PROXY UNKNOWN\r\n", "v1 header"),
        ((1, 2), b"\x00\x08", "not a PROXY header"),
    ],
)
def test_missing_header_says_what_came_and_what_to_check(
    versions: tuple[int, ...], data: bytes, word: str
) -> None:
    result, _ = feed(data, len(data), versions=versions)
    assert isinstance(result, MissingProxyHeader)
    assert word in str(result)
    assert "send-proxy" in str(result)


def test_misuse_is_a_local_error() -> None:
    parser = ProxyParser()
    parser.receive_data(b"")
    parser.receive_data(b"")  # a second EOF is fine
    with pytest.raises(LocalProxyError):
        parser.receive_data(b"x")
    with pytest.raises(LocalProxyError, match="versions"):
        ProxyParser(versions=(3,))
    with pytest.raises(LocalProxyError, match="versions"):
        ProxyParser(versions=())
    with pytest.raises(LocalProxyError, match="max_v2_length"):
        ProxyParser(max_v2_length=70000)


# -- Hypothesis ---------------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6).filter(lambda ip: ip.ipv4_mapped is None)
ports = st.integers(0, 65535)
LOCAL_FAMILIES = {
    0x00: (ProxyFamily.UNSPEC, ProxyTransport.UNSPEC),
    0x11: (ProxyFamily.INET, ProxyTransport.STREAM),
    0x21: (ProxyFamily.INET6, ProxyTransport.STREAM),
}
tlvs = st.lists(st.builds(Tlv, st.integers(0, 255), st.binary(max_size=40)), max_size=4)


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, ProxyHeader]:
    """A valid header on the wire and what it must parse to."""
    kind = draw(st.sampled_from(["v1-4", "v1-6", "v1-unknown", "v2-4", "v2-6", "v2-local"]))
    if kind == "v2-local":
        body = draw(st.binary(max_size=60))
        byte = draw(st.sampled_from(sorted(LOCAL_FAMILIES)))
        return v2_header(0x20, byte, body), ProxyHeader(
            2, ProxyCommand.LOCAL, *LOCAL_FAMILIES[byte], length=16 + len(body)
        )
    if kind == "v1-unknown":
        junk = draw(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=90))
        data = f"PROXY UNKNOWN{' ' + junk if junk else ''}\r\n".encode()
        return data, ProxyHeader(
            1, ProxyCommand.PROXY, ProxyFamily.UNSPEC, ProxyTransport.UNSPEC, length=len(data)
        )
    six = kind.endswith("6")
    src, dst = draw(ipv6 if six else ipv4), draw(ipv6 if six else ipv4)
    sport, dport = draw(ports), draw(ports)
    family = ProxyFamily.INET6 if six else ProxyFamily.INET
    if kind.startswith("v1"):
        data = f"PROXY TCP{6 if six else 4} {src} {dst} {sport} {dport}\r\n".encode()
        extensions: list[Tlv] = []
    else:
        extensions = draw(tlvs)
        body = src.packed + dst.packed + struct.pack(">HH", sport, dport)
        body += b"".join(
            bytes([t.type]) + struct.pack(">H", len(t.value)) + t.value for t in extensions
        )
        data = v2_header(0x21, 0x21 if six else 0x11, body)
    return data, ProxyHeader(
        1 if kind.startswith("v1") else 2,
        ProxyCommand.PROXY,
        family,
        ProxyTransport.STREAM,
        A(str(src), sport),
        A(str(dst), dport),
        tuple(extensions),
        len(data),
    )


def split_feed(data: bytes, cuts: list[int]) -> tuple[object, bytes]:
    parser = ProxyParser()
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    result: object = NEED_PROXY_DATA
    try:
        for a, b in itertools.pairwise(points):
            parser.receive_data(data[a:b])
            result = parser.next_event()
        parser.receive_data(b"")
        result = parser.next_event()
    except ProxyProtocolError as exc:
        return type(exc), b""
    return result, parser.trailing_data


@given(headers(), st.binary(max_size=64), st.lists(st.integers(0, 10_000), max_size=8))
def test_round_trip_split_anywhere(
    header: tuple[bytes, ProxyHeader], trailing: bytes, cuts: list[int]
) -> None:
    data, expected = header
    assert split_feed(data + trailing, cuts) == (expected, trailing)


@given(st.binary(max_size=300), st.lists(st.integers(0, 10_000), max_size=8))
def test_arbitrary_bytes_parse_or_fail_cleanly_however_split(data: bytes, cuts: list[int]) -> None:
    whole = split_feed(data, [])
    assert split_feed(data, cuts) == whole
    assert split_feed(data, list(range(len(data)))) == whole  # byte by byte


@given(headers(), st.data())
def test_mutated_headers_parse_or_fail_cleanly(
    header: tuple[bytes, ProxyHeader], data: st.DataObject
) -> None:
    wire = bytearray(header[0] + b"app")
    for _ in range(data.draw(st.integers(1, 3))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    whole = split_feed(bytes(wire), [])
    assert split_feed(bytes(wire), list(range(len(wire)))) == whole
    result, rest = whole
    if isinstance(result, ProxyHeader):
        assert len(rest) + result.length == len(wire)
    else:
        assert isinstance(result, type) and issubclass(result, ProxyProtocolError)


@given(st.sampled_from([b"PROXY ", V2_SIGNATURE]), st.binary(min_size=200, max_size=3000))
def test_buffering_is_bounded_by_the_caps(prefix: bytes, tail: bytes) -> None:
    """Whatever follows a signature, the parser decides within 107 / 16 + cap bytes."""
    parser = ProxyParser(max_v2_length=128)
    data = prefix + tail
    decided_at = None
    for i in range(len(data)):
        parser.receive_data(data[i : i + 1])
        try:
            if parser.next_event() is not NEED_PROXY_DATA:
                decided_at = i + 1
                break
        except ProxyProtocolError:
            decided_at = i + 1
            break
    assert decided_at is not None
    assert decided_at <= (V1_MAX_LENGTH if prefix == b"PROXY " else 16 + 128)
