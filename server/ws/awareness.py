"""Presence fan-out for one session: at most one awareness frame per interval.

A member may send awareness updates as fast as their byte budget allows; relaying each
one to every listener multiplied that by the number of listeners (and dropped slow readers
as slow consumers). ``Presence`` keeps each client's latest state until a flush; this sends
the first change at once and later ones at most once per ``interval_s``, so a flood from
one client reaches each listener as one frame per interval holding only latest states.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from parley.session.presence import Presence
from parley.session.yprotocol import encode_awareness


class AwarenessFanout:
    def __init__(
        self,
        presence: Presence,
        broadcast: Callable[[bytes], None],
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.presence = presence
        self.broadcast = broadcast
        self.interval_s = interval_s
        self.clock = clock
        # Cluster mode: also relay each flushed update to the other nodes.
        self.publish: Callable[[bytes], None] | None = None
        self._last = -math.inf
        self._timer: asyncio.TimerHandle | None = None
        # Bytes of presence sent to every socket so far (each socket's echo credit), and
        # of those each member's own states (which earn their sockets none).
        self.sent_bytes = 0
        self.member_bytes: dict[str, int] = {}

    def changed(self) -> None:
        """Presence has states to relay: flush now, or when the interval is up."""
        if self._timer is not None:
            return  # a flush is due already
        wait = self._last + self.interval_s - self.clock()
        if wait <= 0:
            self.flush()
        else:
            self._timer = asyncio.get_running_loop().call_later(wait, self.flush)

    def relay(self, update: bytes) -> None:
        """Send every socket states another node relayed (counted as the flushes are)."""
        frame = encode_awareness(update)
        self.sent_bytes += len(frame)
        self.broadcast(frame)

    def flush(self) -> None:
        self._timer = None
        update = self.presence.flush()
        if update is None:
            return
        self._last = self.clock()
        self.relay(update)
        for user_id, size in self.presence.flushed_by.items():
            self.member_bytes[user_id] = self.member_bytes.get(user_id, 0) + size
        if self.publish is not None:
            self.publish(update)
