"""Network faults as data: what the wire does to one connection, and a seeded plan for many.

A fault is a small frozen record; a connection gets a tuple of them. Times are
virtual seconds after the connection was made. ``FaultPlan.random(seed)`` draws
each connection's faults from ``seed`` and the connection's key alone (a bot's
index), never from the order connections happen to be made in, so a failing run
replays from its seed::

    plan = FaultPlan.random(1234, reset=0.05)
    plan.faults_for(17)      # (Split(sizes=(3,), ...), Reset(at=211.7...)), every time
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeAlias

import attrs

__all__ = [
    "Delay",
    "Direction",
    "Fault",
    "FaultPlan",
    "FaultRates",
    "HalfClose",
    "RandomSplit",
    "Reset",
    "Split",
    "StopReading",
    "wire_random",
]

Direction: TypeAlias = Literal["both", "to_server", "to_client"]
_DIRECTIONS = ("both", "to_server", "to_client")


def _positive_sizes(_: object, attribute: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
    if not value or any(size < 1 for size in value):
        raise ValueError(f"{attribute.name} must be one or more sizes >= 1, got {value!r}")


def _not_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _direction(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in _DIRECTIONS:
        raise ValueError(f"{attribute.name} must be one of {_DIRECTIONS}, got {value!r}")


@attrs.frozen
class Split:
    """Deliver bytes in pieces: each read takes at most the next size, cycling.

    ``Split((1,))`` delivers byte by byte; a read never joins more than one piece,
    so every packet boundary case of the reader is exercised.
    """

    sizes: tuple[int, ...] = attrs.field(default=(1,), converter=tuple, validator=_positive_sizes)
    direction: Direction = attrs.field(default="both", validator=_direction)


@attrs.frozen
class RandomSplit:
    """Pieces of a random size in ``[low, high]``, drawn from the connection's seeded random."""

    low: int = 1
    high: int = 16
    direction: Direction = attrs.field(default="both", validator=_direction)

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.low <= self.high:
            raise ValueError(f"need 1 <= low <= high, got low={self.low!r} high={self.high!r}")


@attrs.frozen
class Delay:
    """Latency: bytes written at t arrive at t + seconds (+ up to ``jitter``), in order."""

    seconds: float = attrs.field(validator=_not_negative)
    jitter: float = attrs.field(default=0.0, validator=_not_negative)
    direction: Direction = attrs.field(default="both", validator=_direction)


@attrs.frozen
class StopReading:
    """The client stops reading ``at`` seconds in; the server's sends fill ``window``, then block.

    This is the peer that never reads its replies: the server's ``send_all`` blocks
    as on a full TCP window and its replies pile up. The stalled client still
    notices when the server closes (its reads return EOF, dropping what it never read).
    """

    at: float = attrs.field(default=0.0, validator=_not_negative)
    window: int = attrs.field(default=65536, validator=attrs.validators.ge(1))


@attrs.frozen
class Reset:
    """The connection is reset ``at`` seconds in: both ends' next operations raise
    ``BrokenResourceError``."""

    at: float = attrs.field(validator=_not_negative)


@attrs.frozen
class HalfClose:
    """The client half-closes ``at`` seconds in: no more requests, but it still reads replies."""

    at: float = attrs.field(validator=_not_negative)


Fault: TypeAlias = Split | RandomSplit | Delay | StopReading | Reset | HalfClose


def _rate(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} is a probability in [0, 1], got {value!r}")


@attrs.frozen
class FaultRates:
    """How likely each kind of fault is for one connection, and the span they happen in."""

    split: float = attrs.field(default=0.2, validator=_rate)
    delay: float = attrs.field(default=0.2, validator=_rate)
    stop_reading: float = attrs.field(default=0.02, validator=_rate)
    reset: float = attrs.field(default=0.02, validator=_rate)
    half_close: float = attrs.field(default=0.02, validator=_rate)
    #: Timed faults (stop reading, reset, half-close) happen within this many seconds.
    horizon: float = attrs.field(default=600.0, validator=_not_negative)
    #: Delays are drawn up to this many seconds.
    max_delay: float = attrs.field(default=0.5, validator=_not_negative)


def _seeded(*parts: object) -> random.Random:
    # A str seed is hashed with SHA-512 by random.seed: the same on every run and
    # platform, unlike hash(), which PYTHONHASHSEED randomises.
    return random.Random(":".join(str(part) for part in parts))


def wire_random(seed: int, key: int, direction: str) -> random.Random:
    """The random stream one direction of one connection draws pieces and jitter from."""
    return _seeded("trioserver-wire", seed, key, direction)


def _frozen_mapping(value: Mapping[int, Iterable[Fault]]) -> Mapping[int, tuple[Fault, ...]]:
    return {int(key): tuple(faults) for key, faults in value.items()}


@attrs.frozen
class FaultPlan:
    """Which faults each connection suffers, by key (a bot's index); replayable from ``seed``.

    ``fixed`` names the faults of given keys; other keys draw theirs from ``rates``
    (none when ``rates`` is None). ``seed`` also seeds the random piece sizes and
    jitter on each connection's wire.
    """

    seed: int = 0
    fixed: Mapping[int, tuple[Fault, ...]] = attrs.field(factory=dict, converter=_frozen_mapping)
    rates: FaultRates | None = None

    @classmethod
    def random(
        cls,
        seed: int,
        *,
        split: float = 0.2,
        delay: float = 0.2,
        stop_reading: float = 0.02,
        reset: float = 0.02,
        half_close: float = 0.02,
        horizon: float = 600.0,
        max_delay: float = 0.5,
    ) -> FaultPlan:
        """A plan drawing every connection's faults at the given rates from ``seed``."""
        rates = FaultRates(split, delay, stop_reading, reset, half_close, horizon, max_delay)
        return cls(seed=seed, rates=rates)

    def faults_for(self, key: int) -> tuple[Fault, ...]:
        """The faults of connection ``key``: the same for the same seed, whatever else ran."""
        fixed = self.fixed.get(key)
        if fixed is not None:
            return fixed
        rates = self.rates
        if rates is None:
            return ()
        rng = _seeded("trioserver-plan", self.seed, key)
        faults: list[Fault] = []
        # Draw every value whether or not it is used, so that changing one rate
        # does not change the faults of the other kinds.
        draws = [rng.random() for _ in range(5)]
        low = rng.randint(1, 8)
        high = low + rng.randint(0, 24)
        seconds = round(rng.uniform(0.0, rates.max_delay), 6)
        jitter = round(rng.uniform(0.0, rates.max_delay / 4), 6)
        times = [round(rng.uniform(0.0, rates.horizon), 6) for _ in range(3)]
        if draws[0] < rates.split:
            faults.append(RandomSplit(low, high))
        if draws[1] < rates.delay:
            faults.append(Delay(seconds, jitter))
        if draws[2] < rates.stop_reading:
            faults.append(StopReading(times[0]))
        if draws[3] < rates.reset:
            faults.append(Reset(times[1]))
        if draws[4] < rates.half_close:
            faults.append(HalfClose(times[2]))
        return tuple(faults)
