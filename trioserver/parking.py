"""Idle readers parked in an epoll of the worker's own: the cheapest wait for bytes.

::

    parking = ReadParking()
    nursery.start_soon(parking.run)          # one task per worker
    await parking.wait_readable(sock)        # what SocketTransport.wait_readable does

Most of an idle connection's life is one wait for its socket to become readable,
and tens of thousands of connections wait at once, so what a wait holds is paid
for by every one of them. trio's ``wait_readable`` holds three coroutines, a
closure with four cells, a waiter record and a dict entry in its I/O manager:
about 1.2 KB per parked reader (``benchmarks/connection_memory.py``). Here a
reader registers its socket in one epoll of the worker's
(``EPOLLIN | EPOLLONESHOT``, re-armed on each wait as trio does) and parks with
``wait_task_rescheduled``, holding a bound method and one dict entry besides
trio's own parking; one task waits for that epoll in trio's, polls it and
reschedules the readers whose sockets are ready.

The price: a ready socket wakes its reader one scheduler pass later than trio
would (the poller runs first), which many connections woken together share.
Cancellation works as for any trio wait (a kick, a deadline): the reader's
registration is disarmed. A socket must not be closed while its reader is
parked without :meth:`notify_closing` (as with trio's own ``notify_closing``).
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Awaitable
from typing import Final

import outcome
import trio

__all__ = ["ReadParking", "parking_supported"]

#: Most ready sockets taken from the epoll per poll; more stay ready for the next.
_MAX_EVENTS: Final = 1024


def parking_supported() -> bool:
    """True where the worker can keep an epoll of its own (Linux)."""
    return hasattr(select, "epoll")


class ReadParking:
    """Readers parked until their socket is readable (see the module docstring)."""

    __slots__ = ("_epoll", "_parked")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        #: The parked reader of each registered socket, by file descriptor.
        self._parked: dict[int, trio.lowlevel.Task] = {}

    def __len__(self) -> int:
        """How many readers are parked now."""
        return len(self._parked)

    def wait_readable(self, sock: socket.socket) -> Awaitable[None]:
        """Wait until ``sock`` is readable, has hung up, or failed (await the result).

        A plain function returning trio's own wait (no frame of ours while parked),
        so it must be called by the task that awaits it, as ``await`` does.
        Raises ``BusyResourceError`` if another reader is parked on it and
        ``ClosedResourceError`` if it is closed (now or by :meth:`notify_closing`).
        """
        fd = sock.fileno()
        if fd in self._parked:
            raise trio.BusyResourceError("another task is already waiting to read this socket")
        if fd < 0:
            raise trio.ClosedResourceError("the socket was closed")
        epoll = self._epoll
        try:
            epoll.modify(fd, select.EPOLLIN | select.EPOLLONESHOT)
        except FileNotFoundError:  # not registered yet (or its fd number was reused)
            epoll.register(fd, select.EPOLLIN | select.EPOLLONESHOT)
        self._parked[fd] = trio.lowlevel.current_task()
        return trio.lowlevel.wait_task_rescheduled(_Abort(self, fd))  # noqa: ASYNC105

    def notify_closing(self, sock: socket.socket) -> None:
        """``sock`` is about to be closed: its parked reader gets ``ClosedResourceError``."""
        task = self._parked.pop(sock.fileno(), None)
        if task is not None:
            error = trio.ClosedResourceError("another task closed this socket")
            trio.lowlevel.reschedule(task, outcome.Error(error))

    def forget(self, sock: socket.socket) -> None:
        """``sock`` leaves this process open (a handoff): wake its parked reader as
        :meth:`notify_closing` does, and drop its registration, which would otherwise
        outlive this process's copy of the socket."""
        self.notify_closing(sock)
        with contextlib.suppress(OSError):  # never registered here
            self._epoll.unregister(sock.fileno())

    def _abort(self, fd: int) -> trio.lowlevel.Abort:
        """The parked reader was cancelled: forget it and disarm its registration."""
        del self._parked[fd]
        # Closed meanwhile? The kernel dropped the registration with it.
        with contextlib.suppress(OSError):
            self._epoll.modify(fd, 0)
        return trio.lowlevel.Abort.SUCCEEDED

    async def run(self) -> None:
        """Wake the readers whose sockets are ready, whenever any are; until cancelled."""
        epoll, parked = self._epoll, self._parked
        reschedule = trio.lowlevel.reschedule
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll)
                for fd, _ in epoll.poll(0, _MAX_EVENTS):
                    task = parked.pop(fd, None)
                    if task is not None:
                        reschedule(task)
        finally:
            epoll.close()


class _Abort:
    """The abort function of one parked reader: smaller than a closure or a partial."""

    __slots__ = ("fd", "parking")

    def __init__(self, parking: ReadParking, fd: int) -> None:
        self.parking = parking
        self.fd = fd

    def __call__(self, _: object) -> trio.lowlevel.Abort:
        return self.parking._abort(self.fd)
