"""The application the HAProxy test serves (``--app proxy_app:router``, on PYTHONPATH)."""

from __future__ import annotations

import os

from trioserver.dispatch import Router
from trioserver.framer import Packet
from trioserver.handlers import Context, default_router

#: Reply: "<instance (master) pid> <ctx.peer>": which instance answered, and whom it saw.
WHO = 200


def router() -> Router:
    """The built-in handlers (ping, register, login) plus WHO."""
    served = default_router()

    def who(ctx: Context, packet: Packet) -> None:
        ctx.reply(WHO, f"{os.getppid()} {ctx.peer}".encode())

    served.add(WHO, who)
    return served
