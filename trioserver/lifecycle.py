"""A connection's lifecycle: the states, and the one table of allowed moves.

Shaped like h11's ``_state.py``: the states are an enum, every allowed move is
in ``TRANSITIONS``, and :func:`check_move` is the only judge. A move outside the
table is a bug in the server (never the peer's doing), raised as
:class:`LifecycleError`.

::

    NEW ──bytes──▶ READING ⇄ IDLE          (IDLE: parked until the peer sends more)
     │               │
     │      EOF, rule, drain ──▶ FINISHING ──▶ LINGERING ──┐
     │               │               │                      ▼
     └── kick, reset, deadline ─────────────────────────▶ CLOSING ──▶ CLOSED

    NEW, READING, IDLE ──reload──▶ HANDING_OFF ──acknowledged──▶ MOVED ──▶ CLOSING
                                       └──refused, failed──▶ FINISHING

- NEW: accepted, nothing received yet (a PROXY header may be on its way). A drain
  gives it a moment for its first request instead of closing it under the client.
- READING / IDLE: open. A drain closes an IDLE connection with nothing in hand at
  once, and makes a READING one stop after what has already arrived.
- FINISHING: reads no more (EOF, a rule such as flood, the drain); every request
  already read is still answered and every reply flushed.
- LINGERING: all sent; our side is shut and the peer's bytes are discarded until
  its EOF, so that closing does not reset replies it has not read yet.
- CLOSING: closing now (a kick, a reset peer, a deadline); nothing more is sent.
- CLOSED: the slot is released (exactly once) and the transport closed.
- HANDING_OFF: a reload hands the connection to a new worker. The reader stopped
  at a packet boundary (bytes of a packet not yet whole stay in the decoder), the
  handlers finish what it read, and the outbox only queues. If the new worker
  refuses it or its channel breaks, the connection drains (FINISHING) here.
- MOVED: the new worker acknowledged it: this worker releases the slot and closes
  its copy of the socket without a word to the peer (no FIN: the new worker holds
  the socket too).

Invariants the table keeps: nothing leaves CLOSED, so a slot is released once;
CLOSING is reachable from every state before it and only CLOSED follows it, so
a kick is final; nothing returns to READING once it stopped reading; MOVED
leads only to CLOSING (where the slot is released, as for every connection),
and a kick does not apply to it, so a moved connection is never also drained or
kicked here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

__all__ = ["TRANSITIONS", "LifecycleError", "State", "check_move"]


class State(enum.Enum):
    """Where a connection is in its life (see the module docstring)."""

    NEW = "new"
    READING = "reading"
    IDLE = "idle"
    FINISHING = "finishing"
    LINGERING = "lingering"
    CLOSING = "closing"
    CLOSED = "closed"
    HANDING_OFF = "handing_off"
    MOVED = "moved"


#: Every allowed move. Anything else is a bug in the server, raised as LifecycleError.
TRANSITIONS: Final[Mapping[State, frozenset[State]]] = {
    State.NEW: frozenset({State.READING, State.FINISHING, State.CLOSING, State.HANDING_OFF}),
    State.READING: frozenset({State.IDLE, State.FINISHING, State.CLOSING, State.HANDING_OFF}),
    State.IDLE: frozenset({State.READING, State.CLOSING, State.HANDING_OFF}),
    State.FINISHING: frozenset({State.LINGERING, State.CLOSING}),
    State.LINGERING: frozenset({State.CLOSING}),
    State.CLOSING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
    State.HANDING_OFF: frozenset({State.MOVED, State.FINISHING, State.CLOSING}),
    State.MOVED: frozenset({State.CLOSING}),
}


class LifecycleError(RuntimeError):
    """A connection was asked to make a move its state does not allow (a server bug)."""


def check_move(current: State, new: State) -> None:
    """Raise :class:`LifecycleError` unless the table allows ``current`` → ``new``."""
    if new not in TRANSITIONS[current]:
        raise LifecycleError(f"cannot move from {current.value} to {new.value}")
