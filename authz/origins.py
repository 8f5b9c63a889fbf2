"""Which browser origins may open a session socket (against cross-site WebSocket hijacking)."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    """Decide from the handshake's ``Origin`` and ``Host`` headers.

    No ``Origin`` header: not a browser (browsers always send one), allowed. An empty
    allow-list admits only the server's own host (same origin); ``*`` admits any origin;
    otherwise the origin must be listed exactly (scheme://host[:port]).
    """
    if origin is None:
        return True
    if "*" in allowed:
        return True
    if allowed:
        return origin.rstrip("/") in {a.rstrip("/") for a in allowed}
    if not host:
        return False
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return netloc.lower() == host.lower()
