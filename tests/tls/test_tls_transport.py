"""The TLS transport on its own, over a transport in memory: records in, sends out."""

from __future__ import annotations

import contextlib
import ssl

import attrs
import trio
import trio.testing

from trioserver.framer import PING
from trioserver.stats import Counters
from trioserver.tls_transport import TlsTransport, TlsUpgrade

from ..fake_transport import FakeTransport
from .conftest import Pki


@attrs.frozen
class Conn:
    peer: str = "203.0.113.9:4242"
    id: str = "c1"


@attrs.define
class ClientEnd:
    """The client's end: an SSLObject on memory BIOs, wired by hand to the fake transport."""

    wire: FakeTransport
    incoming: ssl.MemoryBIO = attrs.Factory(ssl.MemoryBIO)
    outgoing: ssl.MemoryBIO = attrs.Factory(ssl.MemoryBIO)
    ssl: ssl.SSLObject | None = None

    def send(self) -> None:
        """Put what the client wrote on the wire, all in one receive for the server."""
        self.wire.feed(self.outgoing.read())

    def take(self) -> list[bytes]:
        """What the server sent, one item per send; into the client's BIO."""
        sends, self.wire.sends[:] = list(self.wire.sends), []
        for data in sends:
            self.incoming.write(data)
        return sends


async def handshaken(pki: Pki, nursery: trio.Nursery) -> tuple[TlsTransport, ClientEnd]:
    wire = FakeTransport()
    peer = ClientEnd(wire)
    peer.ssl = pki.client_context().wrap_bio(
        peer.incoming, peer.outgoing, server_hostname="localhost"
    )
    upgrade = TlsUpgrade(pki.server_tls().binary, 10.0, Counters(), nursery)
    result: list[TlsTransport | None] = []

    async def server_side() -> None:
        result.append(await upgrade(wire, b"", Conn()))

    nursery.start_soon(server_side)
    while not result:
        with contextlib.suppress(ssl.SSLWantReadError):
            peer.ssl.do_handshake()
        peer.send()
        await trio.testing.wait_all_tasks_blocked()
        peer.take()
    tls = result[0]
    assert tls is not None
    peer.ssl.do_handshake()  # the server's Finished was in the last sends
    return tls, peer


async def test_records_of_one_receive_are_one_batch_and_one_send(pki: Pki) -> None:
    async with trio.open_nursery() as nursery:
        tls, peer = await handshaken(pki, nursery)
        assert peer.ssl is not None
        for _ in range(5):
            peer.ssl.write(PING)  # five records, as a pipelining client sends them
        peer.send()
        assert tls.receive_nowait(65536) == PING * 5
        assert tls.receive_nowait(65536) is None
        # The replies: one write, one record, one send, from the caller's own call.
        assert tls.send_nowait(PING * 5) == 40
        assert len(peer.take()) == 1
        assert peer.ssl.read(1024) == PING * 5
        # A receive never hands over more than was asked; the rest comes next.
        for _ in range(3):
            peer.ssl.write(PING)
        peer.send()
        assert tls.receive_nowait(12) == (PING * 3)[:12]
        assert tls.receive_nowait(12) == (PING * 3)[12:]
        assert tls.receive_nowait(12) is None
        nursery.cancel_scope.cancel()
