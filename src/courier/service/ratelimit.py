"""Token buckets keyed by user (sends, typing) or held by one connection (frames)."""

from __future__ import annotations

import time

from courier.domain.errors import rate_limited


class TokenBucket:
    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last = time.monotonic()

    def take(self, now: float | None = None) -> float:
        """Take one token; return 0 when allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / self._rate

    def give_back(self) -> None:
        """Return a token taken for an attempt that turned out not to count."""
        self._tokens = min(self._burst, self._tokens + 1.0)

    def full(self, now: float) -> bool:
        return self._tokens + (now - self._last) * self._rate >= self._burst

    def check(self) -> None:
        wait = self.take()
        if wait:
            raise rate_limited(wait)


class KeyedLimiter:
    """One bucket per key, created on first use; full (idle) buckets are dropped now and then
    so memory follows the active users, not every user ever seen."""

    def __init__(self, rate: float, burst: float, *, prune_at: int = 10_000) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: dict[str, TokenBucket] = {}
        self._prune_at = prune_at

    def check(self, key: str) -> None:
        self._bucket(key).check()

    def take(self, key: str) -> float:
        """Take a token if there is one; the seconds to wait when there was none."""
        return self._bucket(key).take()

    def give_back(self, key: str) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.give_back()

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune()
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst)
        return bucket

    def _prune(self) -> None:
        now = time.monotonic()
        self._buckets = {k: b for k, b in self._buckets.items() if not b.full(now)}
        self._prune_at = max(self._prune_at, 2 * len(self._buckets))
