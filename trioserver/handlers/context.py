"""What a message handler gets: a ``Context`` to reply, kick and reach the worker's services.

A handler is ``def handler(ctx, packet)`` or ``async def handler(ctx, packet)``;
plain functions are called without a coroutine, which matters for the cheap,
hot handlers (ping). A handler replies with ``ctx.reply(code, body)``; replies
leave in request order, batched into one send with the rest of what is queued.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import attrs

from ..config import Config
from ..connection import Connection
from ..framer import Packet, encode
from ..peer import Peer
from ..reasons import CloseReason, KickReason
from ..tls_transport import PeerCertificate

if TYPE_CHECKING:
    from ..hub import Hub

__all__ = [
    "BatchHandler",
    "BatchRun",
    "CloseHandler",
    "ConnectionHandler",
    "Context",
    "Handler",
    "LoginHook",
    "Services",
    "WorkerTask",
]

log = logging.getLogger("trioserver.handlers")


@attrs.define(eq=False)
class Services:
    """The worker's shared objects, reachable from every handler as ``ctx.services``.

    ``accounts`` is the account store when one is configured; ``app`` holds
    whatever the embedding application passed to the worker.
    """

    config: Config = attrs.Factory(Config)
    accounts: Any = None
    app: dict[str, Any] = attrs.Factory(dict)


class LoginHook(Protocol):
    """The router's ``on_login`` handlers, as :meth:`Context.logged_in` runs them."""

    async def logged_in(self, ctx: Context) -> None: ...


class Context:
    """One connection as its handlers see it.

    ``ctx.send(data)`` queues already-encoded bytes (one or more whole packets)
    as one reply. A peer that lets more than ``max_pending_replies`` replies or
    ``max_pending_bytes`` bytes wait unread is kicked; the reply that crossed the
    line is not queued (``send`` returns False, as it does once the connection
    is closing).
    """

    __slots__ = ("_conn", "_hub", "_login", "send", "services")

    #: The outbox's own ``send`` (one call less per reply on the hot path).
    send: Callable[[bytes], bool]

    def __init__(
        self,
        conn: Connection,
        services: Services,
        hub: Hub | None = None,
        login: LoginHook | None = None,
    ) -> None:
        self._conn = conn
        self.services = services
        self._hub = hub
        self._login = login
        self.send = conn.outbox.send

    @property
    def peer(self) -> Peer:
        """The client's address (the one a PROXY header named, if any); ``str()`` is
        ``host:port``."""
        return self._conn.peer

    @property
    def peer_certificate(self) -> PeerCertificate | None:
        """The client's verified certificate on a TLS listener with ``[tls] client_ca``
        set (its ``subject``, ``common_name``, ...); None otherwise."""
        certificate = getattr(self._conn.transport, "peer_certificate", None)
        return certificate if isinstance(certificate, PeerCertificate) else None

    @property
    def connection_id(self) -> str:
        """``slot#sequence``: unique within the worker, the id used in its logs."""
        return self._conn.id

    @property
    def global_id(self) -> str:
        """``instance-worker.process-slot-sequence``: unique across workers and instances,
        the address ``hub.send_to_connection`` and ``publish(exclude=...)`` take."""
        return self._conn.global_id

    @property
    def hub(self) -> Hub:
        """The worker's hub: push to users, connections and groups (:mod:`trioserver.hub`)."""
        hub = self._hub
        if hub is None:
            raise RuntimeError("this connection's worker has no hub")
        return hub

    def join(self, group: str) -> bool:
        """Join ``group`` (``hub.publish`` reaches it); left automatically on close."""
        return self.hub.join(self._conn, group)

    def leave(self, group: str) -> bool:
        """Leave ``group``; False if this connection was not in it."""
        return self.hub.leave(self._conn, group)

    @property
    def groups(self) -> frozenset[str]:
        """The groups this connection is in."""
        hub = self._hub
        return frozenset() if hub is None else hub.groups_of(self._conn)

    @property
    def user(self) -> str | None:
        """The logged-in user's name, or None before a successful login."""
        return self._conn.user

    @user.setter
    def user(self, name: str | None) -> None:
        hub = self._hub
        if hub is None:
            self._conn.user = name
        else:
            hub.set_user(self._conn, name)  # send_to_user finds it under its new name
        if name is not None:
            self._conn.logged_in()  # the login deadline no longer applies

    @property
    def state(self) -> dict[str, Any]:
        """Free per-connection storage for the application."""
        state = self._conn.app_state
        if state is None:
            state = self._conn.app_state = {}
        return state

    @property
    def closed(self) -> bool:
        """True once the connection is closing; replies made after that are dropped."""
        return self._conn.stale or self._conn.closing

    def reply(self, code: int, body: bytes = b"") -> None:
        """Queue one packet for this connection (the CRC and length are computed)."""
        self.send(encode(code, body))

    def flush(self) -> None:
        """Have what is queued sent as soon as this task next waits.

        Replies of plain handlers leave together when their batch ends; those made
        by async handlers or other tasks leave when that task next waits, all the
        ones made until then in one send. Calling this is only needed after
        replying from a plain handler that was handed the context some other way.
        """
        self._conn.outbox.defer()

    async def logged_in(self) -> None:
        """Run the router's ``on_login`` handlers for this connection.

        The built-in login handler calls it after its reply (so a welcome push
        follows the reply); a login handler of the application's own should too,
        after setting ``ctx.user``.
        """
        if self._login is not None:
            await self._login.logged_in(self)

    def kick(self, reason: str | None = None) -> None:
        """Close this connection now; replies still queued are not sent."""
        if reason:
            log.info("handler kicks %s (conn %s): %s", self._conn.peer, self._conn.id, reason)
        self._conn.kick(KickReason.APPLICATION)


Handler: TypeAlias = Callable[[Context, Packet], Awaitable[None] | None]
#: One connection's consecutive requests of one message code within a batch.
BatchRun: TypeAlias = tuple[Context, list[Packet]]


class BatchHandler(Protocol):
    """Serves requests of its message codes many at a time (the account requests).

    The message queue gathers, from every connection, the runs of consecutive
    requests of one code that arrived while the previous batch was in hand, and
    passes them to ``handle_batch`` together, in a task of their own; each
    connection waits (its later packets in its inbox) until its run is answered.
    """

    def run_limit(self, ctx: Context, code: int) -> int:
        """Most consecutive ``code`` requests of ``ctx``'s connection one batch may take.

        0: none (the route's own handler serves them one at a time).
        """
        ...

    async def handle_batch(self, runs: list[BatchRun]) -> None:
        """Answer every request of ``runs`` through its context, in order per connection.

        Replies are held while it runs and leave in one send per connection after it.
        """
        ...


#: ``on_connect`` and ``on_login`` handlers: ``(ctx)``, plain or async.
ConnectionHandler: TypeAlias = Callable[[Context], Awaitable[None] | None]
#: ``on_close`` handlers: ``(ctx, reason)``, plain or async.
CloseHandler: TypeAlias = Callable[
    [Context, KickReason | CloseReason | None], Awaitable[None] | None
]
#: ``on_worker_start`` functions: ``(worker)``; async ones run as tasks.
WorkerTask: TypeAlias = Callable[[Any], Awaitable[None] | None]
