"""Signatures of tool webhook requests, and the check a tool server runs on each one.

Parley sends every call with a fresh delivery id and signs it with the tool's secret::

    X-Parley-Delivery: <random id, new for every request>
    X-Parley-Timestamp: <unix seconds>
    X-Parley-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<delivery id>." + body)>

A timestamp alone lets a captured request be replayed as often as it likes within the
window it is accepted in; the delivery id, signed with it, makes each request once-only.
``WebhookVerifier`` is the check for integrators to copy: the signature in constant time,
the timestamp within ``tolerance_s`` of now, and the delivery id not seen before within
that window (a bounded memory of the ids it accepted).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import re
import secrets
import threading

TIMESTAMP_HEADER = "X-Parley-Timestamp"
SIGNATURE_HEADER = "X-Parley-Signature"
DELIVERY_HEADER = "X-Parley-Delivery"
DEFAULT_TOLERANCE_S = 300
DEFAULT_MAX_REMEMBERED = 100_000
DELIVERY_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
TIMESTAMP = re.compile(r"[0-9]{1,12}")  # unix seconds


def new_delivery_id() -> str:
    """A fresh ``X-Parley-Delivery`` value (128 random bits)."""
    return secrets.token_urlsafe(16)


def sign(secret: str, timestamp: int, delivery_id: str, body: bytes) -> str:
    """The ``X-Parley-Signature`` value of a request sent at ``timestamp``."""
    signed = f"{timestamp}.{delivery_id}.".encode() + body
    return f"sha256={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}"


def verify_signature(
    secret: str,
    body: bytes,
    timestamp: str | None,
    delivery_id: str | None,
    signature: str | None,
    *,
    now: float,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> bool:
    """True only for a request signed with ``secret`` within ``tolerance_s`` of ``now``.

    Stateless, so it cannot tell a replay within the window: use ``WebhookVerifier``."""
    # ASCII digits only: ``isdigit`` holds for superscripts that ``int`` refuses (review I5).
    if not timestamp or not signature or not TIMESTAMP.fullmatch(timestamp):
        return False
    if delivery_id is None or not DELIVERY_ID.fullmatch(delivery_id):
        return False
    sent = int(timestamp)
    if abs(now - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, sent, delivery_id, body), signature)


class WebhookVerifier:
    """Accept each signed delivery once. Keep one per tool secret for the life of the
    process (it remembers what it accepted); safe to share between threads.

    Memory is bounded by ``max_remembered`` ids. When more than that arrive within one
    window, the id with the oldest timestamp is forgotten and every request stamped no
    later than it is refused from then on (it could be a replay of a forgotten id): under
    such a flood the window shrinks, and a replay still never verifies.
    """

    def __init__(
        self,
        secret: str,
        *,
        tolerance_s: int = DEFAULT_TOLERANCE_S,
        max_remembered: int = DEFAULT_MAX_REMEMBERED,
    ) -> None:
        self.secret = secret
        self.tolerance_s = tolerance_s
        self.max_remembered = max_remembered
        self._by_age: list[tuple[int, str]] = []  # (timestamp, delivery id), a heap
        self._seen: set[str] = set()
        self._refuse_up_to = -1  # timestamps at or below this are refused
        self._lock = threading.Lock()

    @property
    def remembered(self) -> int:
        """How many delivery ids it holds now."""
        return len(self._seen)

    def verify(
        self,
        body: bytes,
        timestamp: str | None,
        delivery_id: str | None,
        signature: str | None,
        *,
        now: float,
    ) -> bool:
        """True for an authentic, fresh request whose delivery id is new; the id is then
        remembered until its timestamp leaves the window."""
        if not verify_signature(
            self.secret,
            body,
            timestamp,
            delivery_id,
            signature,
            now=now,
            tolerance_s=self.tolerance_s,
        ):
            return False
        assert timestamp is not None and delivery_id is not None  # checked above
        with self._lock:
            return self._first_time(delivery_id, int(timestamp), now)

    def _first_time(self, delivery_id: str, sent: int, now: float) -> bool:
        while self._by_age and self._by_age[0][0] < now - self.tolerance_s:
            _, expired = heapq.heappop(self._by_age)  # its timestamp is refused from now on
            self._seen.discard(expired)
        if sent <= self._refuse_up_to or delivery_id in self._seen:
            return False
        heapq.heappush(self._by_age, (sent, delivery_id))
        self._seen.add(delivery_id)
        if len(self._seen) > self.max_remembered:
            oldest, forgotten = heapq.heappop(self._by_age)
            self._seen.discard(forgotten)
            self._refuse_up_to = max(self._refuse_up_to, oldest)
        return True
