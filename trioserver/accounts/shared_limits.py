"""Login limits that every worker sharing an account store counts together: pure rules.

Each worker's own token buckets (:mod:`.limiter`) count only what that worker
saw, so N workers would allow N times a budget. The store (SQLite: a table in the
accounts file, shared by a machine's workers; PostgreSQL: a table every instance
shares) therefore also keeps, per limit key, one number: the time ``until`` its
failures have drained (GCRA, the "theoretical arrival time" form of a token
bucket). With ``burst`` B refilled in ``window`` W, each failure costs
``T = W / B`` seconds, and at ``now`` the key holds ``(until - now) / T``
failures. An attempt is allowed while that level is at most ``B - 1``; a failure
moves ``until`` to ``max(until, now) + T``. So the budget and refill are exactly
the buckets' (B tries, then one more every T), but stored as one number that
needs no read-modify-write in Python.

What it costs: the levels are read in the same store call as the account (no
extra round trip, nothing written, on a login that succeeds from a clean
network); each failure is one write. A success writes only when it has
something to forget (the pair's earlier failures) or to remember (a network
with failures that now logged in to this name).

Concurrency: attempts are checked against failures already recorded, so guesses
that run at the same moment on W workers (each bounded by its own buckets) can
all pass before any is recorded. The level is not capped at B, though: such an
overshoot is recorded and waits out in full (``B + k`` failures hold the key for
``(k + 1) T`` longer), so over time the rate is the configured one.

Keys: ``n`` (name, network), ``a`` (network), ``u`` (name, counted only for
networks with failures that never logged in to it) and ``k`` (this network has
logged in to this name; lives ``KNOWN_FOR`` seconds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import attrs

__all__ = [
    "KNOWN_FOR",
    "Limit",
    "LimitUpdate",
    "MemoryLimits",
    "SharedLoginLimits",
    "Verdict",
]

#: Seconds a network that logged in to a name stays known for it.
KNOWN_FOR: Final = 30 * 86400.0
#: Rows past their ``until`` that one write also deletes (the table stays small).
PRUNE: Final = 32
#: Slack for float sums of ``T`` (a few ulps of times near 2**31).
_EPSILON: Final = 1e-6
_SEPARATOR: Final = "\x1f"


@attrs.frozen
class Limit:
    """``burst`` failures, refilled evenly in ``window`` seconds; ``burst=0`` is off."""

    burst: int
    window: float

    @property
    def enabled(self) -> bool:
        return self.burst > 0

    @property
    def cost(self) -> float:
        """Seconds one failure holds a key (``window / burst``)."""
        return self.window / self.burst

    def level(self, until: float | None, now: float) -> float:
        """Failures the key holds at ``now``."""
        if until is None or until <= now:
            return 0.0
        return (until - now) / self.cost

    def allows(self, until: float | None, now: float) -> bool:
        """True if one more attempt fits: at most ``burst - 1`` failures held."""
        if not self.enabled or until is None:
            return True
        return until - now <= (self.burst - 1) * self.cost + _EPSILON


@attrs.frozen
class LimitUpdate:
    """What one attempt writes to the shared table (all applied at one ``now``).

    ``add``: ``until = max(until, now) + cost``; ``raise_to``: ``until = max(until, at)``;
    ``delete``: forget the key.
    """

    add: tuple[tuple[str, float], ...] = ()
    raise_to: tuple[tuple[str, float], ...] = ()
    delete: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.add or self.raise_to or self.delete)

    def touched(self) -> frozenset[str]:
        return frozenset(k for k, _ in self.add + self.raise_to) | frozenset(self.delete)


@attrs.frozen
class Verdict:
    """What the shared table says of one attempt, and what it needs to write afterwards."""

    allowed: bool
    untrusted: bool  #: counts for the name's limit over untrusted networks
    pair_failed: bool  #: this (name, network) holds failures
    network_failed: bool  #: this network holds failures
    known: bool  #: this network has logged in to this name


@attrs.frozen
class SharedLoginLimits:
    """The login limits as rules over the shared table (see the module docstring)."""

    name: Limit  #: per (name, network)
    network: Limit  #: per network
    untrusted: Limit  #: per name, over networks with failures that never logged in to it
    known_for: float = KNOWN_FOR

    @staticmethod
    def keys(key: str, network: str) -> tuple[str, str, str, str]:
        """The table keys one attempt reads: pair, network, name, known pair.

        Parts are joined with U+001F, which no name may contain (PostgreSQL text
        cannot hold NUL).
        """
        s = _SEPARATOR
        return (f"n{s}{key}{s}{network}", f"a{s}{network}", f"u{s}{key}", f"k{s}{key}{s}{network}")

    def judge(
        self, untils: Mapping[str, float], key: str, network: str, now: float, *, known_here: bool
    ) -> Verdict:
        """The verdict on an attempt, from the ``untils`` read for its keys."""
        pair, net, name, known_key = self.keys(key, network)
        pair_until, net_until = untils.get(pair), untils.get(net)
        known_until = untils.get(known_key)
        known = known_here or (known_until is not None and known_until > now)
        network_failed = self.network.enabled and self.network.level(net_until, now) > 0.0
        untrusted = self.untrusted.enabled and network_failed and not known
        allowed = (
            self.name.allows(pair_until, now)
            and self.network.allows(net_until, now)
            and (not untrusted or self.untrusted.allows(untils.get(name), now))
        )
        return Verdict(
            allowed=allowed,
            untrusted=untrusted,
            pair_failed=self.name.enabled and self.name.level(pair_until, now) > 0.0,
            network_failed=network_failed,
            known=known,
        )

    def failed(self, verdict: Verdict, key: str, network: str) -> LimitUpdate:
        """The write for a failed attempt: one failure on each limit it counts for."""
        pair, net, name, _ = self.keys(key, network)
        add = [(pair, self.name), (net, self.network)]
        if verdict.untrusted:
            add.append((name, self.untrusted))
        return LimitUpdate(add=tuple((k, limit.cost) for k, limit in add if limit.enabled))

    def succeeded(self, verdict: Verdict, key: str, network: str, now: float) -> LimitUpdate:
        """The write for a success: forget the pair's typos; remember a failing network.

        Empty (nothing to write) for a login from a clean network with no failures.
        """
        pair, _, _, known_key = self.keys(key, network)
        delete = (pair,) if verdict.pair_failed else ()
        raise_to = ((known_key, now + self.known_for),) if verdict.network_failed else ()
        return LimitUpdate(raise_to=raise_to, delete=delete)


def apply_update(untils: dict[str, float], update: LimitUpdate, now: float) -> None:
    """Apply ``update`` to a table held in a dict (the rule every backend follows)."""
    for key, cost in update.add:
        untils[key] = max(untils.get(key, now), now) + cost
    for key, at in update.raise_to:
        untils[key] = max(untils.get(key, at), at)
    for key in update.delete:
        untils.pop(key, None)
    touched = update.touched()
    expired = [k for k, until in untils.items() if until < now and k not in touched]
    for k in expired[:PRUNE]:
        del untils[k]


@attrs.define(eq=False)
class MemoryLimits:
    """The shared table in a dict: for one process's services sharing a ``MemoryStore``."""

    untils: dict[str, float] = attrs.Factory(dict)

    def read(self, keys: Sequence[str]) -> dict[str, float]:
        return {k: self.untils[k] for k in keys if k in self.untils}

    def apply(self, update: LimitUpdate, now: float) -> None:
        apply_update(self.untils, update, now)
