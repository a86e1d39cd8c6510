"""A per-token rate limit: a token bucket refilled at `per_minute` / 60 a second.

A bucket holds up to `per_minute` calls, so a CI burst is fine and a runaway loop is
stopped. The clock is an argument (monotonic seconds).
"""

from __future__ import annotations

__all__ = ["RateLimiter"]


class RateLimiter:
    """Token buckets by key; `take(key, now)` is 0 when allowed, else seconds to wait."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (level, at)

    def take(self, key: str, now: float) -> float:
        """Spend one call for `key`; 0.0 if allowed, else how long until one is."""
        level, at = self._buckets.get(key, (self.capacity, now))
        level = min(self.capacity, level + (now - at) * self.rate)
        if level >= 1.0:
            self._buckets[key] = (level - 1.0, now)
            return 0.0
        self._buckets[key] = (level, now)
        return (1.0 - level) / self.rate
