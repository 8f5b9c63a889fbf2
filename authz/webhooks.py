"""Signatures of tool webhook requests: HMAC-SHA256 over the timestamp and the body.

Parley sends ``X-Parley-Timestamp: <unix seconds>`` and
``X-Parley-Signature: sha256=<hex of HMAC-SHA256(secret, "<timestamp>." + body)>``. A tool
server recomputes the signature over the raw body with its per-tool secret, compares it in
constant time, and refuses a timestamp older (or newer) than a few minutes, so a captured
request cannot be replayed later. ``verify_signature`` is that check, for integrators to copy.
"""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMP_HEADER = "X-Parley-Timestamp"
SIGNATURE_HEADER = "X-Parley-Signature"
DEFAULT_TOLERANCE_S = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Parley-Signature`` value of a request sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_signature(
    secret: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    now: float,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> bool:
    """True only for a request signed with ``secret`` within ``tolerance_s`` of ``now``."""
    if not timestamp or not signature or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    sent = int(timestamp)
    if abs(now - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, sent, body), signature)
