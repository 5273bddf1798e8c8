"""Listening sockets on real loopback: a queue closed to new handshakes is still accepted."""

from __future__ import annotations

import errno
import socket
import sys

import pytest

from trioserver.config import Address
from trioserver.sockets import bind_listener, stop_queueing


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux socket filter")
def test_stop_queueing_keeps_the_queue_and_starts_no_new_handshake() -> None:
    with bind_listener(Address("127.0.0.1", 0), 16) as listener:
        port = listener.getsockname()[1]
        queued = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        assert stop_queueing(listener)
        with socket.socket() as late:
            late.setblocking(False)
            assert late.connect_ex(("127.0.0.1", port)) == errno.EINPROGRESS
            accepted = []
            while True:
                try:
                    accepted.append(listener.accept()[0])
                except BlockingIOError:
                    break
            # The three queued before are all there; the late SYN was dropped, not queued.
            assert len(accepted) == 3
            with pytest.raises(OSError) as not_connected:
                late.getpeername()
            assert not_connected.value.errno == errno.ENOTCONN
        for sock in [*queued, *accepted]:
            sock.close()
