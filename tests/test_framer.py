"""The sans-I/O framer: the vectors of docs/protocol.md, every decoder case fed whole,
byte by byte and with trailing bytes, and a Hypothesis round trip split at random points."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioserver.framer import (
    NEED_DATA,
    PING,
    Discarded,
    DiscardReason,
    FrameDecoder,
    LocalProtocolError,
    Packet,
    PacketLengthError,
    TruncatedPacketError,
    encode,
    encode_header,
)
from trioserver.messages import encode_login, encode_register


def test_crc_vectors() -> None:
    assert zlib.crc32(b"123456789") == 0xCBF43926
    assert zlib.crc32(bytes(100)) == 0x9988C6CA
    assert zlib.crc32(bytes(96)) == 0xBAF465AE


def test_packet_vectors() -> None:
    assert bytes.fromhex("0008 0000 00000000") == PING
    register = encode_register("alice", "secret", 1)
    assert register[:8] == bytes.fromhex("006c 0005 a514f7a1")
    assert register[8:18] == bytes.fromhex("00000001 616c696365 00".replace(" ", ""))
    assert len(register) == 0x6C
    login = encode_login("alice", "secret")
    assert login[:8] == bytes.fromhex("0068 0006 f3ddf1d4")
    assert login[8:14] == bytes.fromhex("616c696365 00".replace(" ", ""))


def events_of(data: bytes, *, chunk: int | None = None, **kw: int) -> list[object]:
    """Feed ``data`` whole or ``chunk`` bytes at a time; collect every event."""
    decoder = FrameDecoder(**kw)
    out: list[object] = []
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        out.extend(decoder.receive_packets(data[i : i + step]))
    return out


CASES = [
    ("ping", PING, [Packet(0, b"")]),
    ("body", encode(9, b"hello"), [Packet(9, b"hello")]),
    ("two", PING + encode(7, b"x"), [Packet(0, b""), Packet(7, b"x")]),
    (
        "bad crc",
        struct.pack(">HHI", 13, 7, 1234) + b"hello",
        [Discarded(7, DiscardReason.BAD_CRC, 13)],
    ),
    (
        "crc on empty body",
        struct.pack(">HHI", 8, 0, 1),
        [Discarded(0, DiscardReason.CRC_ON_EMPTY_BODY, 8)],
    ),
    ("max size", encode(7, bytes(28992)), [Packet(7, bytes(28992))]),
]


@pytest.mark.parametrize("chunk", [None, 1, 3])
@pytest.mark.parametrize(("name", "data", "expected"), CASES, ids=[c[0] for c in CASES])
def test_decoder_cases(name: str, data: bytes, expected: list[object], chunk: int | None) -> None:
    assert events_of(data, chunk=chunk) == expected
    # with trailing bytes: the events are the same and the tail stays buffered
    decoder = FrameDecoder()
    assert decoder.receive_packets(data + PING[:5]) == expected
    assert decoder.pending == 5
    assert decoder.next_packet() is NEED_DATA


@pytest.mark.parametrize("length", [0, 7, 29001, 0xFFFF])
@pytest.mark.parametrize("chunk", [None, 1])
def test_bad_length_is_fatal_and_sticky(length: int, chunk: int | None) -> None:
    decoder = FrameDecoder()
    data = PING + struct.pack(">HHI", length, 0, 0) + PING
    with pytest.raises(PacketLengthError) as info:
        step = chunk or len(data)
        for i in range(0, len(data), step):
            decoder.receive_packets(data[i : i + step])
    assert info.value.length == length
    assert "29000" in str(info.value)
    with pytest.raises(PacketLengthError):
        decoder.next_packet()
    assert decoder.error is info.value


def test_max_packet_length_is_a_setting() -> None:
    assert events_of(encode(7, bytes(92)), max_packet_length=100) == [Packet(7, bytes(92))]
    with pytest.raises(PacketLengthError):
        events_of(encode(7, bytes(93)), max_packet_length=100)
    with pytest.raises(ValueError, match="max_packet_length"):
        FrameDecoder(7)
    with pytest.raises(ValueError, match="max_packet_length"):
        FrameDecoder(70000)


def test_eof_mid_packet_is_truncated() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode(7, b"hello")[:10])
    assert decoder.next_packet() is NEED_DATA
    decoder.receive_data(b"")
    with pytest.raises(TruncatedPacketError):
        decoder.next_packet()


def test_clean_eof() -> None:
    decoder = FrameDecoder()
    assert decoder.receive_packets(PING) == [Packet(0)]
    decoder.receive_data(b"")
    assert decoder.next_packet() is NEED_DATA
    assert decoder.they_are_done
    with pytest.raises(LocalProtocolError):
        decoder.receive_data(b"more")


def test_encode_rejects_what_cannot_be_framed() -> None:
    with pytest.raises(LocalProtocolError, match="u16"):
        encode(70000)
    with pytest.raises(LocalProtocolError, match="does not fit"):
        encode_header(7, bytes(65528))
    assert len(encode(7, bytes(65527))) == 65535


packets = st.lists(
    st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=300)), min_size=1, max_size=20
)


@given(packets, st.data())
def test_round_trip_split_anywhere(items: list[tuple[int, bytes]], data: st.DataObject) -> None:
    wire = b"".join(encode(code, body) for code, body in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    decoder = FrameDecoder()
    out: list[object] = []
    previous = 0
    for cut in [*cuts, len(wire)]:
        if cut > previous:  # b"" would mean EOF
            out.extend(decoder.receive_packets(wire[previous:cut]))
        previous = cut
    assert out == [Packet(code, body) for code, body in items]
    assert decoder.pending == 0


@given(st.binary(max_size=2000))
def test_garbage_only_raises_documented_errors(blob: bytes) -> None:
    decoder = FrameDecoder()
    try:
        for event in decoder.receive_packets(blob):
            assert isinstance(event, Packet | Discarded)
    except PacketLengthError:
        pass
    assert decoder.pending <= len(blob)


def test_a_drained_decoder_keeps_no_buffer() -> None:
    """An idle connection's decoder holds no bytes once every packet was taken (memory)."""
    decoder = FrameDecoder()
    decoder.receive_data(PING * 3 + PING[:5])
    assert decoder.next_packets() == [Packet(0)] * 3
    assert decoder.pending == 5 and len(decoder._buf) == 5  # only the unfinished packet waits
    decoder.receive_data(PING[5:])
    assert decoder.next_packets() == [Packet(0)]
    assert decoder.pending == 0 and len(decoder._buf) == 0


def test_after_a_large_packet_the_buffer_is_released_and_decoding_goes_on() -> None:
    """A packet that grew the buffer across reads leaves none behind; the next packet,
    split across reads again, still decodes."""
    big = encode(7, bytes(range(256)) * 100)  # 25,608 bytes
    decoder = FrameDecoder()
    for start in range(0, len(big), 4096):
        decoder.receive_data(big[start : start + 4096])
        events = decoder.next_packets()
    assert events == [Packet(7, bytes(range(256)) * 100)]
    assert decoder.pending == 0 and decoder._buf == b""
    after = encode(3, b"after") + PING
    decoder.receive_data(after[:3])
    assert decoder.next_packets() == [] and len(decoder._buf) == 3
    decoder.receive_data(after[3:9])
    assert decoder.next_packets() == []
    decoder.receive_data(after[9:])
    assert decoder.next_packets() == [Packet(3, b"after"), Packet(0)]
    assert decoder._buf == b""


def test_a_reused_receive_buffer_does_not_change_what_was_buffered() -> None:
    """A caller may refill the bytearray it handed over: the decoder copied it."""
    decoder = FrameDecoder()
    chunk = bytearray(encode(4, b"abc")[:6])
    decoder.receive_data(chunk)
    chunk[:] = b"\xff" * 6
    decoder.receive_data(memoryview(encode(4, b"abc")[6:]))
    assert decoder.next_packets() == [Packet(4, b"abc")]


def test_packets_left_by_a_limit_are_decoded_on_the_next_call() -> None:
    """A batch limit leaves whole packets in the chunk; later chunks extend it in order."""
    decoder = FrameDecoder()
    decoder.receive_data(encode(1, b"a") + encode(2, b"b") + encode(3, b"c")[:4])
    assert decoder.next_packets(1) == [Packet(1, b"a")]
    decoder.receive_data(encode(3, b"c")[4:] + encode(5, b"e"))
    assert decoder.next_packets() == [Packet(2, b"b"), Packet(3, b"c"), Packet(5, b"e")]
    assert decoder.pending == 0


def _drain_one_by_one(decoder: FrameDecoder) -> tuple[list[object], str | None]:
    """Every event next_packet gives, then the error that stopped it (by type), if any."""
    out: list[object] = []
    try:
        while (event := decoder.next_packet()) is not NEED_DATA:
            out.append(event)
    except (PacketLengthError, TruncatedPacketError) as exc:
        return out, type(exc).__name__
    return out, None


def _drain_in_batches(decoder: FrameDecoder, limit: int | None) -> tuple[list[object], str | None]:
    out: list[object] = []
    try:
        while batch := decoder.next_packets(limit):
            out.extend(batch)
    except (PacketLengthError, TruncatedPacketError) as exc:
        return out, type(exc).__name__
    return out, None


mixed_wire = st.lists(
    st.one_of(
        st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)).map(lambda t: encode(*t)),
        st.binary(min_size=8, max_size=8),  # any header: bad lengths, bad CRCs
        st.binary(max_size=12),  # loose bytes
    ),
    max_size=12,
).map(b"".join)


@given(mixed_wire, st.data())
def test_batches_give_what_one_at_a_time_gives(wire: bytes, data: st.DataObject) -> None:
    """next_packets (any limit, any cuts, EOF or not) is next_packet in a loop: the same
    events in the same order, the same error after them, the same bytes left over."""
    limit = data.draw(st.none() | st.integers(1, 5))
    cuts = sorted(data.draw(st.lists(st.integers(1, max(1, len(wire))), max_size=4)))
    eof = data.draw(st.booleans())
    one, batched = FrameDecoder(64), FrameDecoder(64)
    results: list[tuple[list[object], str | None]] = [([], None), ([], None)]
    previous = 0
    for cut in [*cuts, len(wire)]:
        chunk = wire[previous:cut]
        previous = max(previous, cut)
        for i, (decoder, drain) in enumerate(
            [(one, _drain_one_by_one), (batched, lambda d: _drain_in_batches(d, limit))]
        ):
            if results[i][1] is not None:
                continue  # stopped at an error: the connection is closed
            if chunk:
                decoder.receive_data(chunk)
            events, error = drain(decoder)
            results[i] = (results[i][0] + events, error)
    if eof:
        for i, (decoder, drain) in enumerate(
            [(one, _drain_one_by_one), (batched, lambda d: _drain_in_batches(d, limit))]
        ):
            if results[i][1] is None:
                decoder.receive_data(b"")
                events, error = drain(decoder)
                results[i] = (results[i][0] + events, error)
    assert results[0] == results[1]
    assert one.pending == batched.pending


@pytest.mark.parametrize("limit", [None, 1, 3])
def test_a_batch_stops_before_a_packet_that_is_one_byte_short(limit: int | None) -> None:
    decoder = FrameDecoder()
    wire = PING + encode(7, b"abc")
    decoder.receive_data(wire[:-1])
    assert decoder.next_packets(limit) == [Packet(0)]
    assert decoder.next_packets(limit) == []
    assert decoder.pending == len(wire) - 1 - len(PING)
    decoder.receive_data(wire[-1:])
    assert decoder.next_packets(limit) == [Packet(7, b"abc")]
