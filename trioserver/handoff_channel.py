"""Moving one connection between two worker processes: its socket and its record.

The channel is a Unix ``SOCK_SEQPACKET`` socket (a socketpair the master gives
an old and a new worker, say): each message is one :class:`ConnectionRecord`
with the connection's fd beside it (SCM_RIGHTS), so a record never arrives
without its socket or in pieces. The sender closes its copy of the fd only once
the message is sent; bytes the client sent meanwhile wait in the socket's kernel
buffer, unread, for the receiver.
"""

from __future__ import annotations

import socket
from typing import Final

import trio

from .handoff_record import ConnectionRecord, HandoffRecordError

__all__ = ["MAX_MESSAGE", "channel_pair", "receive_connection", "send_connection"]

#: The largest record a message carries; a connection with more unsent or partial
#: bytes is not moved (it drains instead).
MAX_MESSAGE: Final = 128 * 1024


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected, non-blocking ends of a handoff channel."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def send_connection(
    channel: socket.socket, conn: socket.socket, record: ConnectionRecord
) -> None:
    """Send ``conn``'s fd with ``record``; ValueError if the record is too big to move.

    The caller still owns ``conn`` and closes it after this returns.
    """
    message = record.encode()
    if len(message) > MAX_MESSAGE:
        raise ValueError(f"a {len(message)}-byte record is over {MAX_MESSAGE}")
    while True:
        try:
            socket.send_fds(channel, [message], [conn.fileno()])
            return
        except BlockingIOError:
            await trio.lowlevel.wait_writable(channel)


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
