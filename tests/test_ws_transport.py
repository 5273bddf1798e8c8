"""The WebSocket transport under a real Connection, in memory, against wsproto as the client.

The client is wsproto's own client side (masked frames, its parser for what the server
sends): a library not written here, on both ends of the bytes the transport handles.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Pong, TextMessage

from trioserver.config import ConnectionSettings
from trioserver.framer import encode
from trioserver.handlers import default_router
from trioserver.lifecycle import State
from trioserver.reasons import CloseReason, KickReason
from trioserver.ws_transport import CLOSE_TIMEOUT, WebSocketTransport, frame_header

from .fake_transport import FakeTransport, serving

PING_PACKET = encode(0, b"")


class Browser:
    """The client end: wsproto's client side over the fake transport's two buffers."""

    def __init__(self, fake: FakeTransport) -> None:
        self.fake = fake
        self.ws = WsConnection(ConnectionType.CLIENT)
        self.read = 0

    def send(self, data: bytes, *, finished: bool = True) -> None:
        self.fake.feed(self.ws.send(Message(data=data, message_finished=finished)))

    def send_event(self, event: Any) -> None:
        self.fake.feed(self.ws.send(event))

    def events(self) -> list[Any]:
        raw = self.fake.sent
        self.ws.receive_data(raw[self.read :])
        self.read = len(raw)
        return list(self.ws.events())

    def payload(self) -> bytes:
        """The binary payload received so far (every message, joined)."""
        return b"".join(e.data for e in self.events() if isinstance(e, BytesMessage))


@pytest.fixture
def settings() -> ConnectionSettings:
    return ConnectionSettings(flood_check=False)


async def open_ws(
    harness: Any, *, max_message: int = 262144, lingers: bool = True
) -> tuple[Any, FakeTransport, WebSocketTransport, Browser]:
    fake = FakeTransport()
    ws = WebSocketTransport(fake, max_message=max_message)
    conn = harness.connection(ws)
    harness.nursery.start_soon(lambda: conn.serve(proxy_header=False))
    await trio.testing.wait_all_tasks_blocked()
    return conn, fake, ws, Browser(fake)


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


def close_of(events: list[Any]) -> CloseConnection:
    closes = [e for e in events if isinstance(e, CloseConnection)]
    assert len(closes) == 1, events
    return closes[0]


def test_frame_header_lengths() -> None:
    assert frame_header(0) == b"\x82\x00"
    assert frame_header(125) == b"\x82\x7d"
    assert frame_header(126) == b"\x82\x7e\x00\x7e"
    assert frame_header(65535) == b"\x82\x7e\xff\xff"
    assert frame_header(65536) == b"\x82\x7f" + (65536).to_bytes(8, "big")


async def test_a_message_of_several_packets_gets_every_reply() -> None:
    async with serving(default_router()) as harness:
        _, _, _, browser = await open_ws(harness)
        browser.send(PING_PACKET * 3)
        await settle()
        assert browser.payload() == PING_PACKET * 3


async def test_a_packet_across_messages_and_fragments() -> None:
    async with serving(default_router()) as harness:
        _, _, _, browser = await open_ws(harness)
        browser.send(PING_PACKET[:3])  # one message
        browser.send(PING_PACKET[3:5], finished=False)  # a fragmented one: first frame...
        await settle()
        assert browser.payload() == b""  # no whole packet yet
        browser.send(PING_PACKET[5:] + PING_PACKET[:1], finished=False)
        browser.send(PING_PACKET[1:])  # ...its last frame
        await settle()
        assert browser.payload() == PING_PACKET * 2


async def test_each_send_is_one_binary_message() -> None:
    async with serving(default_router()) as harness:
        _, _, _, browser = await open_ws(harness)
        browser.send(PING_PACKET)
        await settle()
        events = browser.events()
        assert [type(e) for e in events] == [BytesMessage]
        assert events[0].message_finished and events[0].data == PING_PACKET


async def test_ping_frames_get_pongs_and_pongs_are_ignored() -> None:
    async with serving(default_router()) as harness:
        conn, _, _, browser = await open_ws(harness)
        browser.send_event(Ping(b"are you there"))
        browser.send_event(Pong(b"unasked"))
        await settle()
        assert browser.events() == [Pong(b"are you there")]
        assert not conn.closing  # control frames carry no packet: it waits for one


@pytest.mark.parametrize(
    ("offence", "code", "reason"),
    [
        ("text", 1003, KickReason.WEBSOCKET),
        ("oversize", 1009, KickReason.WEBSOCKET_TOO_BIG),
        ("unmasked", 1002, KickReason.WEBSOCKET),
        ("reserved bits", 1002, KickReason.WEBSOCKET),
        ("bad continuation", 1002, KickReason.WEBSOCKET),
    ],
)
async def test_protocol_errors_close_with_a_code_and_a_counted_kick(
    offence: str, code: int, reason: KickReason
) -> None:
    async with serving(default_router()) as harness:
        conn, fake, _, browser = await open_ws(harness, max_message=100)
        browser.send(PING_PACKET)  # answered: it came before the fault
        if offence == "text":
            browser.send_event(TextMessage("hello"))
        elif offence == "oversize":
            big = encode(7, b"x" * 200)
            browser.send(big[:60], finished=False)
            browser.send(big[60:120])  # 120 bytes in one message: over 100
        elif offence == "unmasked":
            fake.feed(frame_header(8) + PING_PACKET)  # a server's frame, from the client
        elif offence == "reserved bits":
            fake.feed(b"\xf2\x80abcd")  # RSV1-3 set, no extension agreed
        else:
            fake.feed(b"\x80\x80abcd")  # a continuation with no message begun
        await settle()
        events = browser.events()
        assert events[0] == BytesMessage(PING_PACKET, True, True)
        assert close_of(events).code == code
        assert conn.state is State.CLOSED and fake.closed
        assert harness.counters.kicks == {reason.value: 1}


async def test_the_peers_close_is_answered_and_ends_it_quietly() -> None:
    async with serving(default_router()) as harness:
        conn, fake, _, browser = await open_ws(harness)
        browser.send(PING_PACKET)
        browser.send_event(CloseConnection(1000, "bye"))
        await settle()
        events = browser.events()
        assert events[0] == BytesMessage(PING_PACKET, True, True)
        assert close_of(events).code == 1000
        assert conn.state is State.CLOSED and fake.closed
        assert conn.reason is None and harness.counters.kicks == {}


async def test_a_finished_connection_closes_with_a_handshake(
    settings: ConnectionSettings,
) -> None:
    """A rule that stops reading (a bad packet header) answers what came, sends its
    close, and reads until the client's close answers it (the WebSocket linger)."""
    async with serving(default_router(), settings=settings) as harness:
        conn, fake, _, browser = await open_ws(harness)
        browser.send(PING_PACKET + b"\x00\x02" + b"\0" * 6)  # pkgLen 2: out of range
        await settle()
        events = browser.events()
        assert events[0].data == PING_PACKET
        assert close_of(events).code == 1008 and events[-1].reason == "bad_length"
        assert conn.state is State.LINGERING and not fake.closed
        browser.send_event(CloseConnection(1008))  # the client answers
        await settle()
        assert conn.state is State.CLOSED and fake.closed
        assert harness.counters.kicks == {"bad_length": 1}


async def test_heartbeat_kick_in_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    settings = ConnectionSettings(flood_check=False, heartbeat_wait=20.0)
    async with serving(default_router(), settings=settings) as harness:
        start = trio.current_time()
        conn, _, _, browser = await open_ws(harness)
        await trio.sleep(60)
        browser.send(PING_PACKET)  # a ping moves the deadline: 70 s from here
        await trio.sleep(69.5)
        assert conn.state is State.IDLE
        while conn.state is not State.CLOSED:
            await trio.sleep(0.01)
        assert trio.current_time() - start == pytest.approx(60 + 70, abs=0.02)
        events = browser.events()
        assert close_of(events).code == 1008 and events[-1].reason == "heartbeat"
        assert harness.counters.kicks == {"heartbeat": 1}


async def test_a_drain_closes_an_idle_websocket_with_1001() -> None:
    async with serving(default_router()) as harness:
        conn, _, _, browser = await open_ws(harness)
        browser.send(PING_PACKET)
        await settle()
        harness.shared.stopping = True
        conn.drain(trio.current_time())
        await settle()
        events = browser.events()
        assert events[0].data == PING_PACKET
        assert close_of(events).code == 1001
        assert conn.reason is CloseReason.DRAINED and harness.counters.kicks == {}


async def test_a_frame_the_socket_takes_in_part_is_continued_not_restarted() -> None:
    """The socket's window holds 3 bytes: the frame's header and one payload byte go,
    then the outbox's writer sends the rest, which continues that frame."""
    async with serving(default_router()) as harness:
        _, fake, _, browser = await open_ws(harness)
        fake.room = 3
        browser.send(PING_PACKET)
        await settle()
        assert fake.sent == frame_header(8) + PING_PACKET[:1]
        browser.send_event(Ping(b"p"))  # its pong waits for the frame to end
        await settle()
        fake.make_room()
        await settle()
        assert browser.events() == [BytesMessage(PING_PACKET, True, True), Pong(b"p")]


async def test_frames_arriving_byte_by_byte() -> None:
    async with serving(default_router()) as harness:
        _, fake, _, browser = await open_ws(harness)
        wire = browser.ws.send(Message(data=PING_PACKET * 2))
        for byte in wire:
            fake.feed(bytes([byte]))
            await settle()
        assert browser.payload() == PING_PACKET * 2


async def test_order_holds_when_wsproto_takes_over_mid_stream() -> None:
    """Final binary frames are unmasked by the transport; the first other frame (a ping
    here) hands every later byte to wsproto, in one receive, without reordering."""
    async with serving(default_router()) as harness:
        _, fake, _, browser = await open_ws(harness)
        first = browser.ws.send(Message(data=PING_PACKET[:5]))
        ping = browser.ws.send(Ping(b"1"))
        rest = browser.ws.send(Message(data=PING_PACKET[5:] + PING_PACKET))
        fake.feed(first + ping + rest)
        await settle()
        events = browser.events()
        assert events[0] == Pong(b"1")
        assert b"".join(e.data for e in events[1:]) == PING_PACKET * 2


@pytest.mark.parametrize("size", [125, 126, 65535, 65536, 200_000])
async def test_messages_of_every_length_encoding(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    echo = default_router()

    @echo.route(7)
    def back(ctx: Any, packet: Any) -> None:
        ctx.reply(7, packet.body)

    async with serving(echo) as harness:
        _, _, _, browser = await open_ws(harness, max_message=1 << 20)
        packets = [encode(7, body[i : i + 20000]) for i in range(0, len(body), 20000)]
        browser.send(b"".join(packets))
        await settle()
        assert browser.payload() == b"".join(packets)


async def test_a_single_frame_over_the_limit_and_a_long_length_encoding() -> None:
    async with serving(default_router()) as harness:
        _, fake, _, browser = await open_ws(harness, max_message=100)
        fake.feed(b"\x82\xe5abcd")  # announces 101 bytes: refused before they come
        await settle()
        assert close_of(browser.events()).code == 1009
        assert harness.counters.kicks == {"websocket_too_big": 1}
        _, fake, _, browser = await open_ws(harness)
        fake.feed(b"\x82\xfe\x00\x08abcd" + b"\0" * 8)  # 8 in a 16-bit length: not minimal
        await settle()
        assert close_of(browser.events()).code == 1002


async def test_the_flood_rule_holds_over_websocket() -> None:
    settings = ConnectionSettings(flood_check=True)
    async with serving(default_router(), settings=settings) as harness:
        conn, _, _, browser = await open_ws(harness)
        for _ in range(11):  # ten fast packets pass, the eleventh closes
            browser.send(PING_PACKET)
        await settle()
        events = browser.events()
        assert b"".join(e.data for e in events if isinstance(e, BytesMessage)) == PING_PACKET * 10
        assert close_of(events).code == 1008 and events[-1].reason == "flood"
        browser.send_event(CloseConnection(1008))
        await settle()
        assert conn.state is State.CLOSED and harness.counters.kicks == {"flood": 1}


async def test_the_send_caps_hold_over_websocket(autojump_clock: trio.testing.MockClock) -> None:
    """A browser that reads nothing: its unread replies pass the cap and it is kicked;
    its close frame waits at most CLOSE_TIMEOUT for room that never comes."""
    async with serving(default_router(), max_pending_replies=5) as harness:
        conn, fake, _, browser = await open_ws(harness)
        fake.room = 0
        start = trio.current_time()
        browser.send(PING_PACKET * 7)
        while not fake.closed:
            await trio.sleep(0.01)
        assert trio.current_time() - start == pytest.approx(CLOSE_TIMEOUT, abs=0.02)
        assert conn.state is State.CLOSED and harness.counters.kicks == {"send_queue": 1}


# -- the frame parser, fuzzed --------------------------------------------------------------

_client_messages = st.lists(
    st.tuples(
        st.binary(max_size=300),  # one binary message ...
        st.integers(1, 3),  # ... sent in this many fragments
        st.booleans(),  # a ping from the client before it
    ),
    max_size=8,
)


def _drain(ws: WebSocketTransport) -> tuple[bytes, str | None]:
    got = bytearray()
    try:
        while (data := ws.receive_nowait(65536)) is not None and data:
            got += data
    except trio.BrokenResourceError as exc:
        return bytes(got), type(exc).__name__
    return bytes(got), None


@given(_client_messages, st.data())
def test_any_client_frames_cut_anywhere_give_the_payload_in_order(
    messages: list[tuple[bytes, int, bool]], data: st.DataObject
) -> None:
    """Whatever mix of whole, fragmented and ping frames a real client sends, split at
    any points, the transport hands out exactly the binary payload, in order (the fast
    path and wsproto's parser agree where one hands over to the other)."""
    client = WsConnection(ConnectionType.CLIENT)
    wire = bytearray()
    for body, pieces, ping_first in messages:
        if ping_first:
            wire += client.send(Ping(payload=b"p"))
        step = max(1, -(-len(body) // pieces))
        parts = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
        for i, part in enumerate(parts):
            wire += client.send(Message(data=part, message_finished=i == len(parts) - 1))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    fake = FakeTransport()
    ws = WebSocketTransport(fake, max_message=262144)
    got = bytearray()
    previous = 0
    for cut in [*cuts, len(wire)]:
        if cut > previous:
            fake.feed(bytes(wire[previous:cut]))
            previous = cut
        chunk, error = _drain(ws)
        assert error is None
        got += chunk
    assert bytes(got) == b"".join(body for body, _, _ in messages)


@given(st.binary(max_size=40), st.binary(min_size=1, max_size=200))
def test_garbage_after_good_frames_is_payload_or_a_protocol_error(
    body: bytes, garbage: bytes
) -> None:
    """Hostile bytes never raise anything but the seam's BrokenResourceError (a kick)."""
    client = WsConnection(ConnectionType.CLIENT)
    fake = FakeTransport()
    ws = WebSocketTransport(fake, max_message=1024)
    fake.feed(client.send(Message(data=body)) + garbage)
    got, _ = _drain(ws)
    assert got.startswith(body)
