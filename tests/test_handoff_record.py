"""The connection record a reload's handoff carries: exact round trips, strict decoding."""

from __future__ import annotations

import math

import attrs
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


V2 = attrs.evolve(
    FULL,
    hard_remaining=3600.0,
    prelogin=True,
    state=b"\x80\x05pickled",
    reannounce=False,
    websocket=True,
    subprotocol="trioserver.v1",
    frames=b"\x82\x85\x01\x02",  # a frame's header and mask, its payload still to come
)


def test_version_2_fields_survive_their_wire_form() -> None:
    assert ConnectionRecord.decode(V2.encode()) == V2
    unpicklable = attrs.evolve(FULL, state=None, reannounce=True)
    assert ConnectionRecord.decode(unpicklable.encode()) == unpicklable


def test_a_version_1_record_from_an_older_worker_still_decodes() -> None:
    header = (
        b'{"v":1,"id":"x","host":"h","port":1,"user":null,"heartbeat":null,"flood":0,'
        b'"since":null,"partial":2,"unsent":1,"groups":[]}'
    )
    record = ConnectionRecord.decode(len(header).to_bytes(4, "big") + header + b"ab" + b"c")
    assert record == ConnectionRecord("x", Peer("h", 1), partial=b"ab", unsent=b"c")
    assert (record.state, record.websocket, record.hard_remaining) == (None, False, math.inf)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b'"prelogin":true', b'"prelogin":1'),
        (b'"frames":4', b'"frames":5'),
        (b'"state":9', b'"state":-1'),
        (b'"v":2', b'"v":3'),
    ],
)
def test_a_bad_version_2_field_is_refused(key: bytes, value: bytes) -> None:
    data = V2.encode()
    assert key in data
    header_len = int.from_bytes(data[:4], "big")
    header = data[4 : 4 + header_len].replace(key, value)
    with pytest.raises(HandoffRecordError):
        ConnectionRecord.decode(len(header).to_bytes(4, "big") + header + data[4 + header_len :])
