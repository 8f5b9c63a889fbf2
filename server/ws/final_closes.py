"""The same upgrade closed for good again and again: refused at the upgrade past a budget.

y-websocket before 3.x (1.x, 2.x) reconnects 100 ms after a socket that opened closes,
whatever its code, and backs off (doubling, up to 2.5 s) only after upgrades that failed.
A socket accepted and then closed 4401, 4403 or 4404 (a bad, expired or revoked token, a
removed member, a deleted session) brought such a client back ten times a second for as
long as its tab was open (review RK-1: 95 sockets in 10 s; 50 such tabs, 359 a second).
y-websocket 3.x and the SDKs stop at that close, which is why it is sent after accepting.

So an upgrade that would be closed for good is let in to be closed only within two
budgets, on each node: one per request (``PARLEY_FINAL_CLOSES_PER_MINUTE``, burst
``PARLEY_FINAL_CLOSES_BURST``), the request being its client's address, path, query
string (the token) and origin, as a stock client sends it again; and one per client
address, whatever the request (``PARLEY_FINAL_CLOSES_PER_ADDRESS_PER_MINUTE``, burst
``PARLEY_FINAL_CLOSES_PER_ADDRESS_BURST``): each new bad token was a new request with a
budget of its own, so one address cycling through them was never held back. Past either
the same refusal is answered at the upgrade, its HTTP status (401, 403, 404, 422) and
error body: every stock client backs off. An upgrade refused spends neither.

The address is the request's client as the server sees it: behind a reverse proxy, the
one uvicorn takes from ``X-Forwarded-For`` where it trusts the proxy
(``FORWARDED_ALLOW_IPS``); else the proxy's, which every client behind it then shares.
The address in the request's key keeps clients of one link on other machines apart
(y-websocket 1.x spending what a 3.x client, which stops at the close, needed); clients
on one address with the very same request still share it.

Nothing of the refusal is kept, only what was spent: every upgrade is judged afresh, so
a member let back in is let in at once. Each kind of budget is kept for ``MAX_KEYS``
keys at most, a digest or an address each; past it the one used least lately is
forgotten (as good as new).
"""

from __future__ import annotations

import hashlib

from starlette.datastructures import Headers
from starlette.types import Scope

from parley.server.settings import Settings
from parley.session.ratelimit import KeyedBuckets, Rate

# Requests, and addresses, whose budgets are kept (about 0.3 kB each).
MAX_KEYS = 10_000


class FinalCloses:
    """How often the same upgrade, and any from one address, may be accepted only to be
    closed with a final code."""

    __slots__ = ("_addresses", "_requests")

    def __init__(self, settings: Settings) -> None:
        per_request = Rate(settings.final_closes_per_minute / 60, settings.final_closes_burst)
        per_address = Rate(
            settings.final_closes_per_address_per_minute / 60,
            settings.final_closes_per_address_burst,
        )
        self._requests = KeyedBuckets(per_request, MAX_KEYS)
        self._addresses = KeyedBuckets(per_address, MAX_KEYS)

    def allow(self, scope: Scope, now: float) -> bool:
        """Whether the upgrade of ``scope``, refused with a final close code, may be
        accepted and closed with it (one of its request's budget and one of its address's
        spent); False: refuse it at the upgrade instead (nothing spent)."""
        address = client_address(scope)
        request = request_key(scope, address)
        if self._requests.wait_s(request, now) > 0 or self._addresses.wait_s(address, now) > 0:
            return False
        self._requests.take(request, now)
        self._addresses.take(address, now)
        return True

    def __len__(self) -> int:
        return len(self._requests) + len(self._addresses)


def client_address(scope: Scope) -> str:
    """The address of the upgrade's client as the server sees it ("" if none is known)."""
    client = scope.get("client")
    return str(client[0]) if client else ""


def request_key(scope: Scope, address: str) -> str:
    """The upgrade as its client would send it again: a digest of its client's address,
    its path, its query string (the token) and its ``Origin``."""
    origin = Headers(scope=scope).get("origin", "")
    digest = hashlib.blake2b(digest_size=16)
    path = scope.get("path", "").encode("utf-8", "surrogatepass")
    parts = (address.encode(), path, scope.get("query_string", b""), origin.encode("latin-1"))
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()
