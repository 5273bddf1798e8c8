"""Brute-force limits: token buckets per key (a name, a client address), pure and clock-free.

Each key has a bucket of ``burst`` tokens that refills evenly, completely in
``window`` seconds. An attempt takes one token from every key it involves *before*
the expensive work (the hash), so many concurrent attempts cannot overshoot the
limit; a successful login gives its tokens back. A bucket with no token left
refuses the attempt, which then gets "rate limited" without touching the hash.

Time is passed in (``now``), so tests drive it with plain numbers or trio's mock
clock. Memory is bounded: at most ``max_keys`` buckets, the least recently used
forgotten first (a forgotten bucket is a full one, so forgetting errs towards
letting an attempt through, never towards locking someone out).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import attrs

__all__ = ["TokenBuckets"]


@attrs.define(slots=True)
class _Bucket:
    tokens: float
    stamp: float


@attrs.define(eq=False)
class TokenBuckets:
    """``burst`` tokens per key, refilled completely in ``window`` seconds; ``burst=0`` is off."""

    burst: int
    window: float
    max_keys: int = 100_000
    _buckets: OrderedDict[str, _Bucket] = attrs.field(init=False, factory=OrderedDict)

    def __attrs_post_init__(self) -> None:
        if self.burst < 0 or self.window <= 0 or self.max_keys < 1:
            raise ValueError(
                f"need burst >= 0, window > 0, max_keys >= 1; got {self.burst!r}, "
                f"{self.window!r}, {self.max_keys!r}"
            )

    @property
    def enabled(self) -> bool:
        return self.burst > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def tokens(self, key: str, now: float) -> float:
        """Tokens ``key`` has at ``now`` (``burst`` for a key never seen)."""
        bucket = self._buckets.get(key)
        return float(self.burst) if bucket is None else self._refill(bucket, now)

    def try_take(self, keys: Sequence[str], now: float) -> bool:
        """Take one token from each key's bucket if every one has a token; else take none."""
        if not self.enabled:
            return True
        if any(self.tokens(key, now) < 1.0 for key in keys):
            return False
        for key in keys:
            bucket = self._bucket(key, now)
            bucket.tokens -= 1.0
        return True

    def give_back(self, keys: Sequence[str], now: float) -> None:
        """Return one token to each key (an attempt that turned out fine)."""
        for key in keys:
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.tokens = min(float(self.burst), self._refill(bucket, now) + 1.0)

    def reset(self, key: str) -> None:
        """Forget ``key``: its bucket is full again."""
        self._buckets.pop(key, None)

    def _refill(self, bucket: _Bucket, now: float) -> float:
        elapsed = max(0.0, now - bucket.stamp)
        bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.burst / self.window)
        bucket.stamp = max(bucket.stamp, now)
        return bucket.tokens

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            self._refill(bucket, now)
        return bucket
