"""examples/chat.py plus msgCode 120, which answers the worker's pid (to pick connections)."""

from __future__ import annotations

import os

from examples.chat import router as chat_router
from trioserver.handlers.router import Router

PID = 120


def router() -> Router:
    chat_router.add(PID, lambda ctx, packet: ctx.reply(PID, b"%d" % os.getpid()), replace=True)
    return chat_router
