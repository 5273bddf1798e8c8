"""The router: message code → handler, the table readers check and handler tasks call.

::

    router = Router()
    router.add(100, echo)                 # a plain or an async function (ctx, packet)

    @router.route(101, body_size=4)       # packets of another body size are dropped
    async def lookup(ctx, packet): ...

Connection events and application tasks (see :mod:`trioserver.events`)::

    @router.on_connect                    # (ctx)          plain or async
    @router.on_login                      # (ctx)          after the built-in login succeeded
    @router.on_close                      # (ctx, reason)  exactly once per connection
    @router.on_worker_start               # (worker)       async: a task until the drain

Codes 0-6 are the protocol's (``MessageCode``; 2-4 are reserved and take no
handler); applications use 7 and up. Built-in codes can be served by another
handler with ``replace=True``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import attrs

from ..messages import RESERVED_CODES
from .context import BatchHandler, CloseHandler, ConnectionHandler, Handler, WorkerTask

__all__ = ["Route", "Router"]

F = TypeVar("F", bound=Callable[..., object])


def _callable(what: str, handler: F) -> F:
    if not callable(handler):
        raise TypeError(f"{what} handler must be callable, got {handler!r}")
    return handler


@attrs.frozen
class Route:
    """One message code's handler and the body size it requires (None: any size)."""

    code: int
    handler: Handler
    body_size: int | None
    is_async: bool
    name: str
    #: Serves this code a batch at a time when it takes the request (else ``handler`` does).
    batch: BatchHandler | None = None


class Router:
    """msgCode → handler; the table readers check and handler tasks call.

    ``body_size`` makes the reader drop a packet of the wrong size before it
    costs a queue hop (the protocol drops wrong body sizes silently).
    """

    def __init__(self) -> None:
        self._routes: dict[int, Route] = {}
        #: Connection events and application tasks, each called in the order added.
        self.connect_handlers: list[ConnectionHandler] = []
        self.login_handlers: list[ConnectionHandler] = []
        self.close_handlers: list[CloseHandler] = []
        self.worker_tasks: list[WorkerTask] = []

    def on_connect(self, handler: ConnectionHandler) -> ConnectionHandler:
        """Call ``handler(ctx)`` when a connection opens, before its first message."""
        self.connect_handlers.append(_callable("on_connect", handler))
        return handler

    def on_login(self, handler: ConnectionHandler) -> ConnectionHandler:
        """Call ``handler(ctx)`` after each successful built-in login (``ctx.user`` is set)."""
        self.login_handlers.append(_callable("on_login", handler))
        return handler

    def on_close(self, handler: CloseHandler) -> CloseHandler:
        """Call ``handler(ctx, reason)`` once when a connection closes, however it ends."""
        self.close_handlers.append(_callable("on_close", handler))
        return handler

    def on_worker_start(self, task: WorkerTask) -> WorkerTask:
        """Run ``task(worker)`` in each worker: async ones as tasks until the drain begins."""
        self.worker_tasks.append(_callable("on_worker_start", task))
        return task

    def add(
        self,
        code: int,
        handler: Handler,
        *,
        body_size: int | None = None,
        name: str | None = None,
        replace: bool = False,
        batch: BatchHandler | None = None,
    ) -> Route:
        """Serve ``code`` with ``handler`` (a plain or an async function).

        ``batch``: a :class:`~.context.BatchHandler` that serves the requests it takes
        many at a time (``handler`` serves the others, one by one).
        """
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 0xFFFF:
            raise ValueError(f"message code must be an int in 0..65535, got {code!r}")
        if code in RESERVED_CODES:
            raise ValueError(f"message code {code} is reserved by the protocol (2-4)")
        if body_size is not None and not 0 <= body_size <= 0xFFFF - 8:
            raise ValueError(f"body_size {body_size!r} cannot fit a packet")
        if not callable(handler):
            raise TypeError(f"handler for code {code} must be callable, got {handler!r}")
        if code in self._routes and not replace:
            raise ValueError(
                f"message code {code} is already served by {self._routes[code].name}; "
                "pass replace=True to override it"
            )
        route = Route(
            code=code,
            handler=handler,
            body_size=body_size,
            is_async=inspect.iscoroutinefunction(handler),
            name=name or str(getattr(handler, "__qualname__", None) or repr(handler)),
            batch=batch,
        )
        self._routes[code] = route
        return route

    def route(
        self, code: int, *, body_size: int | None = None, replace: bool = False
    ) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add`."""

        def decorate(handler: Handler) -> Handler:
            self.add(code, handler, body_size=body_size, replace=replace)
            return handler

        return decorate

    @property
    def routes(self) -> Mapping[int, Route]:
        """The table itself (read-only), for the reader's per-packet checks."""
        return self._routes

    def get(self, code: int) -> Route | None:
        return self._routes.get(code)

    def __contains__(self, code: object) -> bool:
        return code in self._routes

    def __iter__(self) -> Iterator[Route]:
        return iter(sorted(self._routes.values(), key=lambda r: r.code))
