"""The same upgrade closed for good again and again: refused at the upgrade past a budget.

y-websocket before 3.x (1.x, 2.x) reconnects 100 ms after a socket that opened closes,
whatever its code, and backs off (doubling, up to 2.5 s) only after upgrades that failed.
A socket accepted and then closed 4401, 4403 or 4404 (a bad, expired or revoked token, a
removed member, a deleted session) brought such a client back ten times a second for as
long as its tab was open (review RK-1: 95 sockets in 10 s; 50 such tabs, 359 a second).
y-websocket 3.x and the SDKs stop at that close, which is why it is sent after accepting.

So an upgrade that would be closed for good is let in to be closed only within a budget
per request (``PARLEY_FINAL_CLOSES_PER_MINUTE``, burst ``PARLEY_FINAL_CLOSES_BURST``, on
each node), the request being its path, query string (the token) and origin, as a stock
client sends it again; past it the same refusal is answered at the upgrade, its HTTP
status (401, 403, 404, 422) and error body: every stock client backs off. Nothing of the
refusal is kept, only what the request spent: every upgrade is judged afresh, so a
member let back in is let in at once. The budgets are kept for ``MAX_KEYS`` requests at
most, a digest each; past it the one used least lately is forgotten (as good as new).
"""

from __future__ import annotations

import hashlib

from starlette.datastructures import Headers
from starlette.types import Scope

from parley.server.settings import Settings
from parley.session.ratelimit import KeyedBuckets, Rate

# Requests whose budgets are kept (about 0.3 kB each).
MAX_KEYS = 10_000


class FinalCloses:
    """How often the same upgrade may be accepted only to be closed with a final code."""

    __slots__ = ("_budgets",)

    def __init__(self, settings: Settings) -> None:
        rate = Rate(settings.final_closes_per_minute / 60, settings.final_closes_burst)
        self._budgets = KeyedBuckets(rate, MAX_KEYS)

    def allow(self, scope: Scope, now: float) -> bool:
        """Whether the upgrade of ``scope``, refused with a final close code, may be
        accepted and closed with it (one of its budget spent); False: refuse it at the
        upgrade instead (nothing spent)."""
        return self._budgets.take(request_key(scope), now) == 0.0

    def __len__(self) -> int:
        return len(self._budgets)


def request_key(scope: Scope) -> str:
    """The upgrade as its client would send it again: a digest of its path, its query
    string (the token) and its ``Origin``."""
    origin = Headers(scope=scope).get("origin", "")
    digest = hashlib.blake2b(digest_size=16)
    path = scope.get("path", "").encode("utf-8", "surrogatepass")
    for part in (path, scope.get("query_string", b""), origin.encode("latin-1")):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()
