"""Connection events and application tasks: what the router's ``on_*`` handlers get, and when.

::

    @router.on_connect
    def hello(ctx): ...                      # after the PROXY header, before the first packet

    @router.on_login
    async def welcome(ctx): ...              # after the built-in login succeeded and was answered

    @router.on_close
    def bye(ctx, reason): ...                # once per connection that had on_connect

    @router.on_worker_start
    async def tick(worker): ...              # a task in the worker's nursery until the drain

Order on one connection: ``on_connect`` before any message handler, ``on_login``
after the login reply was queued, ``on_close`` last and exactly once, on every
way out (EOF, kicks, resets, the drain, the drain timeout). ``reason`` is what
the connection records (``Connection.reason``): a ``KickReason``, a
``CloseReason`` or None (the peer closed and got every answer). While
``on_close`` runs the connection is still in its groups and ``ctx.user`` is
still set, but nothing more can be sent to it.

Plain and async handlers are both allowed. An async ``on_close`` runs shielded
with ``server.event_timeout`` as its deadline, so a drain cannot cut it short
and it cannot hold the worker's exit. A connection event handler that raises
is logged with its traceback and counted as a handler error, and closes its
connection (``on_close``: only logged), never the worker. An application task
that raises is logged and counted; the worker goes on without it. Plain
``on_worker_start`` functions are called once before the worker accepts;
async ones run as tasks and are cancelled when the drain begins.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from .handlers.context import CloseHandler, ConnectionHandler, Context, WorkerTask
from .reasons import KickReason

if TYPE_CHECKING:
    from .connection import Connection
    from .stats import Counters

__all__ = [
    "CloseHandler",
    "ConnectionHandler",
    "Events",
    "WorkerTask",
]

log = logging.getLogger("trioserver.events")


def _name(handler: object) -> str:
    return str(getattr(handler, "__qualname__", None) or repr(handler))


class Events:
    """One worker's connection events: the router's handlers, and how they are fired.

    ``make_context`` turns a connection into the ``Context`` its handlers get
    (the worker's message queue makes them), so events and messages see the same face.
    """

    def __init__(
        self,
        *,
        connect: Sequence[ConnectionHandler] = (),
        login: Sequence[ConnectionHandler] = (),
        close: Sequence[CloseHandler] = (),
        make_context: Callable[[Connection], Context],
        counters: Counters,
        close_timeout: float = 5.0,
    ) -> None:
        self._connect = [(h, inspect.iscoroutinefunction(h)) for h in connect]
        self._login = [(h, inspect.iscoroutinefunction(h)) for h in login]
        self._close = [(h, inspect.iscoroutinefunction(h)) for h in close]
        self._context = make_context
        self._counters = counters
        self._close_timeout = close_timeout

    @property
    def any_connect(self) -> bool:
        return bool(self._connect)

    @property
    def any_close(self) -> bool:
        return bool(self._close)

    async def connected(self, conn: Connection) -> None:
        """Run the ``on_connect`` handlers; one that raises closes ``conn``."""
        await self._run("on_connect", self._connect, self._context(conn), conn)

    async def logged_in(self, ctx: Context) -> None:
        """Run the ``on_login`` handlers (the login handler calls this after its reply)."""
        await self._run("on_login", self._login, ctx, ctx._conn)

    async def _run(
        self, event: str, handlers: Sequence[tuple[Any, bool]], ctx: Context, conn: Connection
    ) -> None:
        """Call ``handlers`` in order until one raises (it closes ``conn``) or ``conn`` closes."""
        for handler, is_async in handlers:
            try:
                if is_async:
                    await handler(ctx)
                else:
                    handler(ctx)
            except Exception:
                self._failed(event, handler, conn)
                return
            if conn.closing:
                return

    async def closed(self, conn: Connection) -> None:
        """Run the ``on_close`` handlers once ``conn`` is closing; errors are only logged."""
        ctx = self._context(conn)
        reason = conn.reason
        for handler, is_async in self._close:
            try:
                if is_async:
                    with trio.CancelScope(
                        deadline=trio.current_time() + self._close_timeout, shield=True
                    ) as scope:
                        await handler(ctx, reason)  # type: ignore[misc]
                    if scope.cancelled_caught:
                        log.warning(
                            "on_close handler %s for conn %s ran past server.event_timeout "
                            "(%.1f s) and was cancelled",
                            _name(handler),
                            conn.id,
                            self._close_timeout,
                        )
                else:
                    handler(ctx, reason)
            except Exception:
                self._counters.handler_errors += 1
                log.exception("on_close handler %s raised for conn %s", _name(handler), conn.id)

    def _failed(self, event: str, handler: object, conn: Connection) -> None:
        self._counters.handler_errors += 1
        log.exception(
            "%s handler %s raised for %s (conn %s); closing it",
            event,
            _name(handler),
            conn.peer,
            conn.id,
        )
        conn.kick(KickReason.HANDLER_ERROR)


async def run_worker_tasks(
    tasks: Sequence[WorkerTask],
    worker: object,
    counters: Counters,
    *,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call the plain ``on_worker_start`` functions, then run the async ones until cancelled.

    ``started`` hands back the scope that stops them (the worker cancels it when
    its drain begins). One that raises is logged and counted; the others go on.
    """
    for task in tasks:
        if not inspect.iscoroutinefunction(task):
            try:
                task(worker)
            except Exception:
                counters.handler_errors += 1
                log.exception("on_worker_start function %s raised", _name(task))
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            for task in tasks:
                if inspect.iscoroutinefunction(task):
                    nursery.start_soon(_guarded, task, worker, counters, name=_name(task))
            task_status.started(scope)


async def _guarded(task: WorkerTask, worker: object, counters: Counters) -> None:
    try:
        await task(worker)  # type: ignore[misc]
    except Exception:
        counters.handler_errors += 1
        log.exception("application task %s raised; the worker goes on without it", _name(task))
