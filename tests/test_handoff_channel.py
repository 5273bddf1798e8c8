"""A live loopback connection moved over a handoff channel keeps every byte, both ways."""

from __future__ import annotations

import socket
import sys

import pytest
import trio

from trioserver.handoff_channel import (
    MAX_MESSAGE,
    Ack,
    channel_pair,
    decode_ack,
    encode_ack,
    receive_ack,
    receive_ack_nowait,
    receive_connection,
    send_ack,
    send_connection,
)
from trioserver.handoff_record import ConnectionRecord, HandoffRecordError
from trioserver.peer import Peer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCM_RIGHTS")


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
    return client, server


async def test_the_receiver_reads_what_the_sender_left_unread_and_answers() -> None:
    client, server = tcp_pair()
    old_end, new_end = channel_pair()
    record = ConnectionRecord("w1-3-7", Peer(*client.getsockname()), user="alice", partial=b"\x00")
    with client, old_end, new_end:
        client.sendall(b"before the move")
        await send_connection(old_end, server, record)
        server.close()  # the old worker's copy
        client.sendall(b", after it")
        got = await receive_connection(new_end)
        assert got is not None
        moved, received = got
        with moved:
            assert received == record
            seen = b""
            while len(seen) < len(b"before the move, after it"):
                await trio.lowlevel.wait_readable(moved)
                seen += moved.recv(100)
            assert seen == b"before the move, after it"
            moved.send(b"reply")
            assert client.recv(100) == b"reply"


async def test_the_channel_ends_with_none() -> None:
    old_end, new_end = channel_pair()
    with new_end:
        old_end.close()
        assert await receive_connection(new_end) is None


async def test_a_record_too_big_to_move_is_refused_before_sending() -> None:
    client, server = tcp_pair()
    old_end, new_end = channel_pair()
    record = ConnectionRecord("x", Peer("h", 1), unsent=b"\x00" * MAX_MESSAGE)
    with client, server, old_end, new_end, pytest.raises(ValueError, match="over"):
        await send_connection(old_end, server, record)


async def test_a_message_without_an_fd_is_refused() -> None:
    old_end, new_end = channel_pair()
    with old_end, new_end:
        old_end.send(ConnectionRecord("x", Peer("h", 1)).encode())
        with pytest.raises(HandoffRecordError):
            await receive_connection(new_end)


@pytest.mark.parametrize("ack", [Ack("t-0.1f-3-0", True), Ack("", False), Ack("ü", False)])
def test_an_ack_survives_its_wire_form(ack: Ack) -> None:
    assert decode_ack(encode_ack(ack)) == ack


@pytest.mark.parametrize("data", [b"", b"?x", b"+\xff"])
def test_anything_else_is_not_an_ack(data: bytes) -> None:
    with pytest.raises(HandoffRecordError):
        decode_ack(data)


async def test_acks_travel_back_and_the_end_reads_as_none() -> None:
    old_end, new_end = channel_pair()
    with old_end, new_end:
        await send_ack(new_end, Ack("a", True))
        await send_ack(new_end, Ack("b", False))
        new_end.close()
        assert await receive_ack(old_end) == Ack("a", True)
        assert await receive_ack(old_end) == Ack("b", False)
        assert await receive_ack(old_end) is None


async def test_once_the_sender_shuts_the_channel_the_receiver_cannot_ack() -> None:
    """What the give-up rule rests on: acks sent before the shutdown are still read,
    acks after it fail to send (so the receiver serves nothing it could not report)."""
    old_end, new_end = channel_pair()
    with old_end, new_end:
        await send_ack(new_end, Ack("sent before", True))
        old_end.shutdown(socket.SHUT_RDWR)
        with pytest.raises(BrokenPipeError):
            await send_ack(new_end, Ack("sent after", True))
        assert receive_ack_nowait(old_end) == Ack("sent before", True)
        with pytest.raises(EOFError):
            receive_ack_nowait(old_end)
