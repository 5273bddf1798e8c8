"""The application the handoff tests serve (``--app handoff_app:router``): each reply names
the worker process that sent it, so a test sees its connection move."""

from __future__ import annotations

import os

from trioserver.dispatch import Router
from trioserver.framer import Packet
from trioserver.handlers import Context, default_router

#: Reply: the body, then " <pid>".
ECHO = 130
#: Reply: "<ctx.user> <pid>"; "- <pid>" when not logged in.
WHOAMI = 131
#: Join the group the body names; reply "<pid>".
JOIN = 132
#: Push the body to group "g" as PUSHED; reply "<pid>".
PUBLISH = 133
PUSHED = 134


def _pid() -> bytes:
    return b"%d" % os.getpid()


def router() -> Router:
    router = default_router()

    def echo(ctx: Context, packet: Packet) -> None:
        ctx.reply(ECHO, bytes(packet.body) + b" " + _pid())

    def whoami(ctx: Context, packet: Packet) -> None:
        ctx.reply(WHOAMI, (ctx.user or "-").encode() + b" " + _pid())

    def join(ctx: Context, packet: Packet) -> None:
        ctx.join(bytes(packet.body).decode())
        ctx.reply(JOIN, _pid())

    def publish(ctx: Context, packet: Packet) -> None:
        ctx.hub.publish("g", PUSHED, bytes(packet.body))
        ctx.reply(PUBLISH, _pid())

    router.add(ECHO, echo)
    router.add(WHOAMI, whoami)
    router.add(JOIN, join)
    router.add(PUBLISH, publish)
    return router
