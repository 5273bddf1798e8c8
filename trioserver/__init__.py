"""trioserver: long-lived TCP connections on trio, speaking the course's binary protocol.

The public face, flat as trio's::

    import trioserver

    router = trioserver.default_router()

    @router.route(100)
    async def echo(ctx: trioserver.Context, packet: trioserver.Packet) -> None:
        ctx.reply(100, packet.body)

    trio.run(trioserver.serve_until_signalled, trioserver.Worker(trioserver.Config(), router))
"""

from __future__ import annotations

from .client import BlockingClient, Client, ConnectionClosed, UnexpectedReply
from .config import Address, Config, ConfigError, load_config
from .framer import NEED_DATA, FrameDecoder, Packet, encode
from .handlers import Context, Services, default_router
from .handlers.router import Router
from .handoff import HandoffCounts
from .hub import Hub, Member
from .messages import ResultCode
from .reasons import CloseReason, DropReason, HandoffKept, KickReason
from .stats import WorkerStatistics
from .worker import Worker, run_worker, serve_until_signalled

__version__ = "0.1.0"

__all__ = [
    "NEED_DATA",
    "Address",
    "BlockingClient",
    "Client",
    "CloseReason",
    "Config",
    "ConfigError",
    "ConnectionClosed",
    "Context",
    "DropReason",
    "FrameDecoder",
    "HandoffCounts",
    "HandoffKept",
    "Hub",
    "KickReason",
    "Member",
    "Packet",
    "ResultCode",
    "Router",
    "Services",
    "UnexpectedReply",
    "Worker",
    "WorkerStatistics",
    "__version__",
    "default_router",
    "encode",
    "load_config",
    "run_worker",
    "serve_until_signalled",
]
