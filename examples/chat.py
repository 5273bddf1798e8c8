"""A chat server on the hub: rooms, private messages and presence, on one or many workers.

Serve it from the repository root with::

    python -m trioserver --app examples.chat:router

Wire format (UTF-8 strings; ``\\0`` separates fields). Every request needs a prior
built-in login (msgCode 6), else its reply is the request's code with result 1.

=====  =======  ==========================  ==============================================
code   name     request body                what comes back
=====  =======  ==========================  ==============================================
100    JOIN     ``room``                    reply 100, one result byte
101    LEAVE    ``room``                    reply 101, one result byte
102    SAY      ``room\\0text``              every member of ``room`` (the sender too) gets
                                            103 ``room\\0sender\\0text``; no other reply
                                            (an error: reply 102 with its result byte)
104    TELL     ``user\\0text``              every connection of ``user`` gets 105
                                            ``sender\\0text``; the sender gets reply 104,
                                            one result byte (0 sent)
106    WHO      ``room``                    reply 106, the members' user names (sorted,
                                            each once) joined by ``\\0``; as many as
                                            fit one packet
=====  =======  ==========================  ==============================================

Result bytes: 0 ok; 1 not logged in; 2 bad request (a room or user name that is
empty, longer than :data:`MAX_NAME` bytes, not UTF-8 or holding ``\\0``; SAY to a
room one has not joined; LEAVE of one not joined); 3 too many rooms
(:data:`MAX_ROOMS` per connection); 4 not delivered beyond this worker (the
hub's remote is down: members here still got it). TELL answers 0 once the
message is handed to the hub, whether or not ``user`` is online anywhere (the
hub's delivery is at most once, without receipts). A user's connections leave
their rooms when they close.
"""

from __future__ import annotations

from typing import Final

import trioserver
from trioserver import Context, Packet

JOIN: Final = 100
LEAVE: Final = 101
SAY: Final = 102
HEARD: Final = 103
TELL: Final = 104
TOLD: Final = 105
WHO: Final = 106

OK: Final = b"\0"
NOT_LOGGED_IN: Final = b"\1"
BAD_REQUEST: Final = b"\2"
TOO_MANY_ROOMS: Final = b"\3"
NOT_DELIVERED: Final = b"\4"

#: Longest room or user name, in bytes (a name is a key in every worker's tables).
MAX_NAME: Final = 64
#: Rooms one connection may be in at once (each costs an entry on every join).
MAX_ROOMS: Final = 32

#: Longest WHO reply body: what one packet holds (a bigger room lists its first names).
MAX_WHO: Final = 0xFFFF - 8

#: The router: ``python -m trioserver --app examples.chat:router``.
router = trioserver.default_router()


def _name(raw: bytes) -> str | None:
    """A room or user name from the wire, or None if it is not a valid one."""
    if not raw or len(raw) > MAX_NAME or b"\0" in raw:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def _group(room: str) -> str:
    return f"chat:{room}"


@router.route(JOIN)
def join(ctx: Context, packet: Packet) -> None:
    if ctx.user is None:
        return ctx.reply(JOIN, NOT_LOGGED_IN)
    room = _name(packet.body)
    if room is None:
        return ctx.reply(JOIN, BAD_REQUEST)
    group = _group(room)
    if group not in ctx.groups and len(ctx.groups) >= MAX_ROOMS:
        return ctx.reply(JOIN, TOO_MANY_ROOMS)
    ctx.join(group)
    ctx.reply(JOIN, OK)


@router.route(LEAVE)
def leave(ctx: Context, packet: Packet) -> None:
    if ctx.user is None:
        return ctx.reply(LEAVE, NOT_LOGGED_IN)
    room = _name(packet.body)
    if room is None or not ctx.leave(_group(room)):
        return ctx.reply(LEAVE, BAD_REQUEST)
    ctx.reply(LEAVE, OK)


@router.route(SAY)
def say(ctx: Context, packet: Packet) -> None:
    if ctx.user is None:
        return ctx.reply(SAY, NOT_LOGGED_IN)
    raw_room, sep, text = packet.body.partition(b"\0")
    room = _name(raw_room)
    if not sep or room is None or _group(room) not in ctx.groups:
        return ctx.reply(SAY, BAD_REQUEST)
    body = b"\0".join((raw_room, ctx.user.encode(), text))
    if not ctx.hub.publish(_group(room), HEARD, body):
        ctx.reply(SAY, NOT_DELIVERED)


@router.route(TELL)
def tell(ctx: Context, packet: Packet) -> None:
    if ctx.user is None:
        return ctx.reply(TELL, NOT_LOGGED_IN)
    raw_user, sep, text = packet.body.partition(b"\0")
    user = _name(raw_user)
    if not sep or user is None:
        return ctx.reply(TELL, BAD_REQUEST)
    sent = ctx.hub.send_to_user(user, TOLD, ctx.user.encode() + b"\0" + text)
    ctx.reply(TELL, OK if sent else NOT_DELIVERED)


@router.route(WHO)
async def who(ctx: Context, packet: Packet) -> None:
    if ctx.user is None:
        return ctx.reply(WHO, NOT_LOGGED_IN)
    room = _name(packet.body)
    if room is None:
        return ctx.reply(WHO, BAD_REQUEST)
    members = await ctx.hub.members(_group(room))
    names = sorted({m.user for m in members if m.user is not None})
    body = "\0".join(names).encode()
    if len(body) > MAX_WHO:  # cut at a name: the sorted list shows where it stops
        body = body[: body.rfind(b"\0", 0, MAX_WHO + 1)]
    ctx.reply(WHO, body)
