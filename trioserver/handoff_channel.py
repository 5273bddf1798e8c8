"""Moving one connection between two worker processes: its socket and its record.

The channel is a Unix ``SOCK_SEQPACKET`` socket (a socketpair the master gives
an old and a new worker, say): each message is one :class:`ConnectionRecord`
with the connection's fd beside it (SCM_RIGHTS), so a record never arrives
without its socket or in pieces. The sender closes its copy of the fd only once
the message is sent; bytes the client sent meanwhile wait in the socket's kernel
buffer, unread, for the receiver.

The receiver answers every message, in the order they came, with an *ack*: one
message ``+id`` (adopted: it serves the connection from now on) or ``-id``
(refused: its pool is full, or the record did not decode, ``id`` then empty).
It sends the ack before it touches the socket and serves the connection only if
the ack was sent, so that the sender's rule is simple: a connection is the
receiver's once its ``+`` ack is read, and the sender's again (to serve or drain)
on a ``-`` ack or when the channel ends without one. To give up before the
channel ends, the sender shuts it (``shutdown(SHUT_RDWR)``): from then on the
receiver's acks fail to send (so it serves nothing more), and the acks already
sent are still read before the end.
"""

from __future__ import annotations

import socket
from typing import Final

import attrs
import trio

from .handoff_record import ConnectionRecord, HandoffRecordError

__all__ = [
    "MAX_MESSAGE",
    "Ack",
    "channel_pair",
    "decode_ack",
    "encode_ack",
    "receive_ack",
    "receive_ack_nowait",
    "receive_connection",
    "send_ack",
    "send_connection",
    "try_send_connection",
]

#: The largest record a message carries; a connection with more unsent or partial
#: bytes is not moved (it drains instead).
MAX_MESSAGE: Final = 128 * 1024
#: The largest ack (a connection id is short).
MAX_ACK: Final = 4096


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected, non-blocking ends of a handoff channel."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


@attrs.frozen
class Ack:
    """The receiver's answer to one message: it adopted the connection, or refused it."""

    connection_id: str
    adopted: bool


def encode_ack(ack: Ack) -> bytes:
    return (b"+" if ack.adopted else b"-") + ack.connection_id.encode()


def decode_ack(data: bytes) -> Ack:
    """The ack in ``data``; HandoffRecordError if it is not one."""
    if not data or data[:1] not in (b"+", b"-"):
        raise HandoffRecordError(f"not an ack: {data[:40]!r}")
    try:
        connection_id = data[1:].decode()
    except UnicodeDecodeError:
        raise HandoffRecordError(f"an ack's id is not UTF-8: {data[:40]!r}") from None
    return Ack(connection_id, data[:1] == b"+")


def try_send_connection(
    channel: socket.socket, conn: socket.socket, record: ConnectionRecord
) -> bool:
    """Send ``conn``'s fd with ``record`` if the channel has room now (False: it has
    not; nothing was sent). ValueError if the record is too big to move, OSError if
    the channel is broken."""
    message = record.encode()
    if len(message) > MAX_MESSAGE:
        raise ValueError(f"a {len(message)}-byte record is over {MAX_MESSAGE}")
    try:
        socket.send_fds(channel, [message], [conn.fileno()])
    except BlockingIOError:
        return False
    return True


async def send_connection(
    channel: socket.socket, conn: socket.socket, record: ConnectionRecord
) -> None:
    """Send ``conn``'s fd with ``record``; ValueError if the record is too big to move.

    The caller still owns ``conn`` and closes it after this returns.
    """
    while not try_send_connection(channel, conn, record):
        await trio.lowlevel.wait_writable(channel)


async def send_ack(channel: socket.socket, ack: Ack) -> None:
    """Send one ack (OSError, BrokenPipeError say the sender is gone or gave up)."""
    data = encode_ack(ack)
    while True:
        try:
            channel.send(data)
            return
        except BlockingIOError:
            await trio.lowlevel.wait_writable(channel)


def receive_ack_nowait(channel: socket.socket) -> Ack | None:
    """The next ack already there; None if none is (BlockingIOError) — EOFError at the
    channel's end, OSError if it broke."""
    try:
        data = channel.recv(MAX_ACK)
    except BlockingIOError:
        return None
    if not data:
        raise EOFError("the handoff channel ended")
    return decode_ack(data)


async def receive_ack(channel: socket.socket) -> Ack | None:
    """The next ack, or None at the channel's end (OSError if it broke)."""
    while True:
        try:
            ack = receive_ack_nowait(channel)
        except EOFError:
            return None
        if ack is not None:
            return ack
        await trio.lowlevel.wait_readable(channel)


async def receive_connection(
    channel: socket.socket,
) -> tuple[socket.socket, ConnectionRecord] | None:
    """The next connection on ``channel`` (a non-blocking socket) or None at its end.

    HandoffRecordError if a message is not a whole record with exactly one fd (any
    fd that came with it is closed).
    """
    while True:
        try:
            data, fds, flags, _ = socket.recv_fds(channel, MAX_MESSAGE + 1, 1)
            break
        except BlockingIOError:
            await trio.lowlevel.wait_readable(channel)
    if not data and not fds:
        return None
    socks = [socket.socket(fileno=fd) for fd in fds]
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(socks) != 1:
            raise HandoffRecordError("a handoff message must be one record and one fd")
        record = ConnectionRecord.decode(data)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    sock = socks[0]
    sock.setblocking(False)
    return sock, record
