"""The limits that keep one person, or the whole bot, from flooding the model.

`TurnRateLimit` is a token bucket per person per scope: a burst, then a
steady rate. `RequestLimit` caps the model calls in flight across chat and
the classifier together; callers beyond the cap wait their turn, first come
first served. Both count what they held back, for /status.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass

# A person who was told they are over the limit hears it again only after this long.
NOTICE_INTERVAL_SECONDS = 60.0
# Buckets are forgotten once full again; they are swept when there are this many.
SWEEP_AT_BUCKETS = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated_at: float
    noticed_at: float | None = None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    tell: bool = False  # refused, and this is the time to say so


class TurnRateLimit:
    """At most `per_minute` turns a minute for each key (a person in a scope), after a burst of `burst`.

    A `per_minute` of 0 turns the limit off.
    """

    def __init__(self, per_minute: float, burst: int) -> None:
        self.per_second = per_minute / 60.0
        self.burst = burst
        self._buckets: dict[Hashable, _Bucket] = {}
        self.refused = 0  # turns skipped since start
        self.told = 0  # notices sent since start

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def check(self, key: Hashable, now: float | None = None) -> Verdict:
        """Take one turn from the key's bucket if it has one."""
        if not self.enabled:
            return Verdict(allowed=True)
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= SWEEP_AT_BUCKETS:
                self._sweep(now)
            bucket = self._buckets[key] = _Bucket(tokens=self.burst, updated_at=now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated_at) * self.per_second)
        bucket.updated_at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return Verdict(allowed=True)
        self.refused += 1
        if bucket.noticed_at is not None and now - bucket.noticed_at < NOTICE_INTERVAL_SECONDS:
            return Verdict(allowed=False)
        bucket.noticed_at = now
        self.told += 1
        return Verdict(allowed=False, tell=True)

    def _sweep(self, now: float) -> None:
        """Drop the buckets that have filled up again: they hold nothing a new one would not."""
        refill = self.burst / self.per_second
        for key in [k for k, b in self._buckets.items() if now - b.updated_at >= max(refill, NOTICE_INTERVAL_SECONDS)]:
            del self._buckets[key]


class RequestLimit:
    """At most `limit` model calls at once (0: no cap); the rest wait in order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = asyncio.Semaphore(limit) if limit > 0 else None
        self.in_flight = 0
        self.waited = 0  # calls since start that had to wait for a slot

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots is not None and self._slots.locked():
            self.waited += 1
        async with self._slots if self._slots is not None else contextlib.nullcontext():
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1
