"""The worker → master pipe records: decoded whole, byte by byte, and with bad input."""

from __future__ import annotations

import os

import pytest

from trioserver.prefork.pipe import (
    HEARTBEAT,
    MAX_REPORT,
    READY,
    MasterPipe,
    PipeDecoder,
    PipeProtocolError,
    encode_handed_over,
    encode_report,
)

STREAM = READY + encode_report(b'{"a":1}') + HEARTBEAT + encode_report(b"R" * 5000) + HEARTBEAT


def test_whole_stream_decodes_in_order() -> None:
    decoded = PipeDecoder().feed(STREAM)
    assert decoded.control == READY + HEARTBEAT + HEARTBEAT
    assert decoded.reports == (b'{"a":1}', b"R" * 5000)


def test_byte_by_byte_gives_the_same_records() -> None:
    decoder = PipeDecoder()
    control = b""
    reports: list[bytes] = []
    for i in range(len(STREAM)):
        decoded = decoder.feed(STREAM[i : i + 1])
        control += decoded.control
        reports.extend(decoded.reports)
    assert control == READY + HEARTBEAT + HEARTBEAT
    assert reports == [b'{"a":1}', b"R" * 5000]
    assert decoder.pending == 0


def test_a_report_body_holding_R_is_not_a_ready() -> None:
    # The reason control bytes are decoded, not searched for: JSON holds "R" too.
    decoded = PipeDecoder().feed(encode_report(b"READY"))
    assert decoded.control == b""


def test_unknown_tag_and_oversized_report_are_errors() -> None:
    with pytest.raises(PipeProtocolError, match="unknown record tag"):
        PipeDecoder().feed(b"X")
    too_long = b"S" + (MAX_REPORT + 1).to_bytes(4, "big")
    with pytest.raises(PipeProtocolError, match="exceeds"):
        PipeDecoder().feed(too_long)
    with pytest.raises(ValueError, match="exceeds MAX_REPORT"):
        encode_report(b"x" * (MAX_REPORT + 1))


def test_writer_never_blocks_keeps_control_bytes_and_drops_reports_behind_a_full_pipe() -> None:
    read_fd, write_fd = os.pipe()
    try:
        pipe = MasterPipe(write_fd, os.getppid())
        assert pipe.send(READY)
        big = encode_report(b"x" * 400_000)  # more than the pipe holds: a partial write
        assert pipe.send(big)
        assert pipe.send(encode_report(b"later"))  # dropped: the big one is still going
        assert pipe.send(HEARTBEAT)  # kept, after the big one
        assert pipe.dropped_reports == 1
        decoder = PipeDecoder()
        control = b""
        reports: list[bytes] = []
        os.set_blocking(read_fd, False)
        while True:
            try:
                chunk = os.read(read_fd, 1 << 16)
            except BlockingIOError:
                if not pipe.waiting:
                    break
                assert pipe.flush()
                continue
            decoded = decoder.feed(chunk)
            control += decoded.control
            reports.extend(decoded.reports)
        assert control == READY + HEARTBEAT
        assert reports == [b"x" * 400_000]
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_writer_reports_a_gone_master() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    try:
        assert not MasterPipe(write_fd, os.getppid()).send(HEARTBEAT)
        assert not MasterPipe(write_fd, -1).send(HEARTBEAT)  # re-parented
    finally:
        os.close(write_fd)


def test_a_handoff_result_is_its_own_record() -> None:
    stream = encode_report(b"{}") + encode_handed_over(b'{"moved":3}') + HEARTBEAT
    decoder = PipeDecoder()
    handoffs: list[bytes] = []
    reports: list[bytes] = []
    for i in range(len(stream)):
        decoded = decoder.feed(stream[i : i + 1])
        handoffs.extend(decoded.handoffs)
        reports.extend(decoded.reports)
    assert handoffs == [b'{"moved":3}'] and reports == [b"{}"]
