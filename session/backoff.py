"""Exponential back-off, sans I/O: one formula for model calls and webhook deliveries."""

from __future__ import annotations

# 2**60 times any base is past every maximum: more doublings only risk an OverflowError
# (a delivery retried by hand keeps counting its attempts, past a thousand and more).
MAX_DOUBLINGS = 60


def doubling_s(base_s: float, max_s: float, attempt: int) -> float:
    """``base_s`` doubled for each attempt after the first (``attempt`` from 1), at most
    ``max_s``; the ceiling a caller draws its jittered wait under."""
    return min(max_s, base_s * 2.0 ** min(max(attempt - 1, 0), MAX_DOUBLINGS))
