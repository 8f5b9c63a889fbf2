"""Telling clients when to come back: while the database is unavailable, past a cap, and
after a socket was cut off for ignoring its limits.

y-websocket before 3.x reconnects 100 ms after a socket that had opened closes, and backs
off (doubling, up to 2.5 s) only after attempts that never opened (3.x resets its back-off
only after a sync). A server that accepts each socket and closes it at once because the
database is down is called about ten times a second by each such client. So: a socket
whose session cannot be loaded is refused at the upgrade (HTTP 503, ``Retry-After``), and
a socket closed because the database failed gets the same hint in its close reason, for
clients that read it.
"""

from __future__ import annotations

import json

from parley.session.errors import ErrorCode

MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a control frame's 125 bytes, less the code

# When a request past a cap (sockets, event streams) may try again: a cap frees as the
# member's (or the session's) others close, which nothing here foretells; a stock client
# ignores it and backs off on its own (up to 2.5 s), the SDKs wait at least this long.
CAP_RETRY_AFTER_S = 5.0


def close_reason(text: str) -> str:
    """``text`` as a close frame may carry it: cut to ``MAX_CLOSE_REASON_BYTES`` of UTF-8
    on a character's boundary. A longer reason is not sent at all (the close fails, and the
    client sees 1006, not the code it would stop at): a cut by characters let text that
    echoes non-ASCII input (an id, a header) run past the bytes a reason may have."""
    encoded = text.encode()
    if len(encoded) <= MAX_CLOSE_REASON_BYTES:
        return text
    return encoded[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


def retry_reason(
    message: str, retry_after_s: float, code: ErrorCode = ErrorCode.UNAVAILABLE
) -> str:
    """A close reason telling a client to wait ``retry_after_s`` before it reconnects:
    JSON (``code``, ``retry_after_ms``, ``message``) that fits a close frame. ``code``:
    why (``unavailable`` for a 1013, ``rate_limited`` for a 4429)."""
    head = {"code": code.value, "retry_after_ms": round(retry_after_s * 1000)}
    while True:
        reason = json.dumps({**head, "message": message}, separators=(",", ":"))
        if len(reason.encode()) <= MAX_CLOSE_REASON_BYTES or not message:
            return reason
        message = message[:-1]
