"""A mesh link to a worker that is away for a while: it holds what waits, in order, and
retries; it drops (counted) only past its bound or its byte cap. Real abstract sockets,
two or three meshes in one process."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from trioserver.hub import Hub
from trioserver.hub_wire import ToConnection, ToGroup, ToUser
from trioserver.mesh import GIVE_UP, RETRY, Mesh, mesh_supported

pytestmark = pytest.mark.skipif(not mesh_supported(), reason="abstract Unix sockets: Linux")


class Recorder(Hub):
    """A hub that records the group packets (and connection ids) other workers send it."""

    def __init__(self, instance: str, worker: int) -> None:
        super().__init__(instance, worker)
        self.got: list[bytes] = []
        self.to_ids: list[str] = []
        self._changed = trio.Event()

    def deliver(self, message: ToGroup | ToUser | ToConnection) -> None:
        super().deliver(message)
        if type(message) is ToGroup:
            self.got.append(message.packet)
            self._changed.set()
            self._changed = trio.Event()
        elif type(message) is ToConnection:
            self.to_ids.append(message.connection_id)

    async def wait_for(self, count: int) -> None:
        while len(self.got) < count:
            await self._changed.wait()


def instance() -> str:
    return "t" + secrets.token_hex(4)


@asynccontextmanager
async def running(mesh: Mesh) -> AsyncIterator[trio.CancelScope]:
    """Run ``mesh`` until the block ends or the scope it yields is cancelled."""
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await mesh.run()

        nursery.start_soon(run)
        try:
            yield scope
        finally:
            nursery.cancel_scope.cancel()


def link_failing(mesh: Mesh, peer: int) -> trio.Event:
    """An event set once ``mesh``'s link to ``peer`` has failed to connect."""
    link = mesh._links[peer]
    failed = trio.Event()
    original = link._failed

    async def failing(why: str) -> None:
        failed.set()
        await original(why)

    link._failed = failing  # type: ignore[method-assign]
    return failed


async def test_a_peer_that_comes_back_gets_everything_sent_meanwhile_in_order() -> None:
    name = instance()
    sender = Hub(name, 1)
    mesh = Mesh(sender, [1, 2, 3])
    old, new, third = Recorder(name, 2), Recorder(name, 2), Recorder(name, 3)
    with trio.fail_after(10):
        async with running(mesh), running(Mesh(third, [1, 2, 3])):
            old_mesh = Mesh(old, [1, 2, 3])
            async with running(old_mesh) as old_scope:
                mesh.publish("g", b"0", ())
                await old.wait_for(1)
                await third.wait_for(1)
                failed = link_failing(mesh, 2)
                old_mesh.stop_listening()  # as a reload's old worker does
                mesh.publish("g", b"1", ())
                await failed.wait()  # slot 2 has no listener now: held, not dropped
                for i in range(2, 50):
                    mesh.publish("g", b"%d" % i, ())
                # A connection the old worker of slot 2 had (another process): it routes
                # to the slot, and the new worker answers to the ids it adopted.
                moved = f"{name}-2.a-0-7"
                assert mesh.to_connection(moved, b"to a moved connection")
                old_scope.cancel()
                async with running(Mesh(new, [1, 2, 3])):
                    for i in range(50, 60):
                        mesh.publish("g", b"%d" % i, ())
                    await new.wait_for(59)
                    await third.wait_for(60)
    assert old.got == [b"0"]
    assert new.to_ids == [moved]
    assert new.got == [b"%d" % i for i in range(1, 60)]
    assert third.got == [b"%d" % i for i in range(60)]
    assert sender.statistics().remote_dropped == 0


async def test_a_link_broken_mid_stream_loses_and_repeats_nothing() -> None:
    # Big messages fill the socket buffers, so the old worker stops listening while
    # frames are in flight: what it had read, or still reads, plus what the new one
    # gets is everything, once each, in order.
    name = instance()
    sender = Hub(name, 1)
    mesh = Mesh(sender, [1, 2])
    old, new = Recorder(name, 2), Recorder(name, 2)
    body = b"x" * (64 << 10)
    packets = [b"%03d" % i + body for i in range(150)]
    with trio.fail_after(10):
        async with running(mesh):
            old_mesh = Mesh(old, [1, 2])
            async with running(old_mesh) as old_scope:
                for packet in packets:
                    mesh.publish("g", packet, ())
                await old.wait_for(3)
                old_mesh.stop_listening()
                async with running(Mesh(new, [1, 2])):
                    await new.wait_for(1)
                    old_scope.cancel()
                    await new.wait_for(len(packets) - len(old.got))
    assert 3 <= len(old.got) < len(packets)
    assert old.got + new.got == packets
    assert sender.statistics().remote_dropped == 0


async def test_a_peer_that_never_comes_back_is_dropped_after_the_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sender = Hub(instance(), 1)
    mesh = Mesh(sender, [1, 2])
    async with running(mesh):
        start = trio.current_time()
        for i in range(3):
            assert mesh.publish("g", b"%d" % i, ())
        await trio.sleep(GIVE_UP - 0.001)
        assert sender.statistics().remote_dropped == 0  # held, retried
        assert len(mesh._links[2].pending) == 2 * 3  # a header and a message each
        await trio.sleep(0.002)
        assert sender.statistics().remote_dropped == 3
        assert mesh._links[2].pending_bytes == 0
        assert trio.current_time() - start == pytest.approx(GIVE_UP + 0.001)
        # Given up: a new message within RETRY of the failed connect is dropped at once,
        # one after it costs one more attempt and is dropped when that fails.
        link = mesh._links[2]
        assert not link.queue(b"soon")
        await trio.sleep(RETRY)
        assert link.queue(b"later")
        await trio.sleep(0.001)
        assert sender.statistics().remote_dropped == 5
        # members() does not wait for it.
        before = trio.current_time()
        assert await sender.members("g") == []
        assert trio.current_time() == before


async def test_the_bound_is_a_parameter(autojump_clock: trio.testing.MockClock) -> None:
    sender = Hub(instance(), 1)
    mesh = Mesh(sender, [1, 2], give_up=0.25)
    async with running(mesh):
        mesh.publish("g", b"a", ())
        await trio.sleep(0.249)
        assert sender.statistics().remote_dropped == 0
        await trio.sleep(0.002)
        assert sender.statistics().remote_dropped == 1


async def test_the_pending_cap_still_drops_and_counts_while_holding() -> None:
    name = instance()
    sender = Hub(name, 1)
    mesh = Mesh(sender, [1, 2], max_pending_bytes=100)
    peer = Recorder(name, 2)
    with trio.fail_after(10):
        async with running(mesh):
            failed = link_failing(mesh, 2)
            mesh.publish("g", b"first", ())
            await failed.wait()
            for i in range(20):
                mesh.publish("g", b"%d" % i, ())
            held = sender.statistics()
            assert held.remote_dropped > 0
            assert held.remote_sent + held.remote_dropped == 21
            async with running(Mesh(peer, [1, 2])):
                await peer.wait_for(held.remote_sent)
    assert peer.got == [b"first"] + [b"%d" % i for i in range(held.remote_sent - 1)]
    assert sender.statistics().remote_dropped == held.remote_dropped
