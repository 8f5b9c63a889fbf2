"""The budgets of the invite exchange, which needs no key: nothing else limits its caller.

An exchange spends one of its client address's budget before the secret is looked up (a
guesser past it costs a bucket, not a read of the store), then, for a secret of a live
invite, one of that invite's (a link tried from many addresses). Past either it is
refused ``rate_limited`` (429, with ``Retry-After``). Behind a reverse proxy the address
is the one uvicorn takes from ``X-Forwarded-For`` when the proxy is trusted
(``FORWARDED_ALLOW_IPS``); else every client shares the proxy's budget.
"""

from __future__ import annotations

from parley.server.settings import Settings
from parley.session.errors import RateLimited
from parley.session.ratelimit import KeyedBuckets, Rate

# Addresses and invites whose budgets are kept; past it the least lately used is forgotten
# (by then refilled, unless so many are being spent at once).
MAX_KEYS = 10_000


class ExchangeLimits:
    """One budget per client address and one per invite, of the same rate."""

    __slots__ = ("_addresses", "_invites")

    def __init__(self, settings: Settings) -> None:
        rate = Rate(settings.invite_exchanges_per_minute / 60, settings.invite_exchanges_burst)
        self._addresses = KeyedBuckets(rate, MAX_KEYS)
        self._invites = KeyedBuckets(rate, MAX_KEYS)

    def spend_address(self, address: str, now: float) -> None:
        """``RateLimited`` past the address's budget."""
        _spend(self._addresses, address, now, "too many invite exchanges from this address")

    def spend_invite(self, digest: str, now: float) -> None:
        """``RateLimited`` past the budget of the invite whose secret's digest this is."""
        _spend(self._invites, digest, now, "too many exchanges of this invite")


def _spend(buckets: KeyedBuckets, key: str, now: float, why: str) -> None:
    wait = buckets.take(key, now)
    if wait > 0:
        raise RateLimited(f"{why}; slow down", wait)
