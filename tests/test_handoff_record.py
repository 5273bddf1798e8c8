"""The connection record a reload's handoff carries: exact round trips, strict decoding."""

from __future__ import annotations

import math

import pytest

from trioserver.framer import encode
from trioserver.handoff_record import ConnectionRecord, HandoffRecordError
from trioserver.peer import Peer

FULL = ConnectionRecord(
    connection_id="a1b2c3d4-2-17",
    peer=Peer("2001:db8::1", 50123),
    user="alice",
    heartbeat_remaining=12.5,
    flood_count=3,
    since_last_packet=0.25,
    partial=encode(7, b"hello")[:3],  # a half-sent header
    unsent=encode(7, b"reply") * 2,
    groups=("lobby", "room:9"),
)


@pytest.mark.parametrize(
    "record",
    [
        FULL,
        ConnectionRecord("x", Peer("127.0.0.1", 1)),  # fresh: no user, no deadline
        ConnectionRecord("y", Peer("unix")),  # no port
        ConnectionRecord("z", Peer("h", 2), partial=b"\x00" * 70000),
    ],
)
def test_a_record_survives_its_wire_form_exactly(record: ConnectionRecord) -> None:
    assert ConnectionRecord.decode(record.encode()) == record


def test_times_are_remaining_seconds_added_to_the_receivers_clock() -> None:
    assert FULL.heartbeat_deadline(1000.0) == 1012.5
    fresh = ConnectionRecord.decode(ConnectionRecord("x", Peer("h", 1)).encode())
    assert fresh.heartbeat_deadline(5.0) == math.inf
    assert fresh.since_last_packet == math.inf


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00",
        b"\x00\x00\x00\x10{}",  # header longer than the data
        b"\x00\x00\x00\x02{}",  # no version
        FULL.encode()[:-1],  # body one byte short
        FULL.encode() + b"!",  # one byte too many
        b"\x00\x00\x00\x04nope",
    ],
)
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(HandoffRecordError):
        ConnectionRecord.decode(data)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b'"flood":3', b'"flood":-1'),
        (b'"port":50123', b'"port":70000'),
        (b'"user":"alice"', b'"user":5'),
        (b'"heartbeat":12.5', b'"heartbeat":"soon"'),
        (b'"groups":["lobby","room:9"]', b'"groups":[1]'),
    ],
)
def test_a_bad_field_is_refused(key: bytes, value: bytes) -> None:
    data = FULL.encode()
    assert key in data
    header_len = int.from_bytes(data[:4], "big")
    header = data[4 : 4 + header_len].replace(key, value)
    with pytest.raises(HandoffRecordError):
        ConnectionRecord.decode(len(header).to_bytes(4, "big") + header + data[4 + header_len :])
