"""The WebSocket close codes Parley's sockets end with: one table, the numbers on the wire.

y-websocket 3.x, the SDKs and the demo treat a 44xx code as final (they stop reconnecting)
and reconnect after the others; y-websocket before 3.x reconnects after every close, so
the same upgrade closed for good too often is refused at the upgrade instead
(``server.ws.final_closes``). Which error closes a socket with which code is
``ParleyError.close_code`` (``session.errors``); the codes no error maps to are the
lifecycle ones (``NORMAL``, ``GOING_AWAY``), a crash (``INTERNAL``) and a client cut off
for ignoring its limits (``ABUSE``, also where a ``RateLimited`` refusal is the last straw).
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001  # the server drains, or the socket was idle too long
    TOO_LARGE = 1009  # a message over its size, or in too many frames (``server.ws.frame_limits``)
    INTERNAL = 1011  # the socket's handler crashed
    TRY_AGAIN = 1013  # the client fell behind, or the database failed: reconnect, resync
    PROTOCOL = 4400  # a malformed binary frame
    UNAUTHENTICATED = 4401
    FORBIDDEN = 4403
    NOT_FOUND = 4404
    GONE = 4410  # a side-thread's document was built anew (a restart): sync an empty one
    ABUSE = 4429  # limits ignored again and again (the reason says when to come back)
