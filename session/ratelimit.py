"""Token buckets for commands and updates, sans I/O: the caller passes the time."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float
    burst: float


class TokenBucket:
    """Allows ``burst`` events at once and ``per_second`` on average after that."""

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self._tokens = rate.burst
        self._updated = now

    def allow(self, now: float, cost: float = 1.0) -> bool:
        elapsed = max(now - self._updated, 0.0)
        self._updated = now
        self._tokens = min(self.rate.burst, self._tokens + elapsed * self.rate.per_second)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False


class AbuseCounter:
    """Counts refusals in a sliding window; past ``limit`` the client is cut off."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: list[float] = []

    def refused(self, now: float) -> bool:
        """Record a refusal; True when the client has been refused too often."""
        self._times = [t for t in self._times if now - t < self.window_s]
        self._times.append(now)
        return len(self._times) > self.limit
