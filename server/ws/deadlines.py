"""One timer per socket for both of its deadlines: its token's expiry, and the idle timeout
while it waits for a frame.

An ``asyncio.timeout`` around every read (a ``Timeout`` and a timer handle, made anew for
each frame) beside a ``call_later`` for the expiry cost an idle socket about 1.2 kB
(``python -m bench.connection_memory``). Here a frame costs two assignments: the timer is
moved only when a deadline comes earlier than the time it is set for, and a timer that
fires before a deadline (the socket read a frame since) is set again for the next one.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from parley.session.closes import CloseCode

# A timer may run up to the loop's clock resolution before its time: a deadline this
# close is reached.
_EARLY_S = 0.001


class SocketDeadlines:
    """Closes the socket (``close(code, reason)``) once ``expires_in_s`` has passed (4401,
    token expired), or once it has waited ``idle_s`` for a frame (1001, idle timeout: between
    ``waiting`` and ``received``); then never again. ``cancel`` when the socket is done."""

    __slots__ = ("_close", "_expires_at", "_handle", "_idle_s", "_loop", "_waiting_since")

    def __init__(
        self, expires_in_s: float, idle_s: float, close: Callable[[CloseCode, str], object]
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._expires_at = self._loop.time() + max(expires_in_s, 0.0)
        self._idle_s = idle_s
        self._close = close
        self._waiting_since: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._arm()

    def waiting(self) -> None:
        """The socket starts waiting for a frame: its idle deadline runs from now."""
        self._waiting_since = self._loop.time()
        self._arm()

    def received(self) -> None:
        """A frame came: no idle deadline while the socket handles it."""
        self._waiting_since = None

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._waiting_since = None
        self._expires_at = math.inf

    def _next(self) -> float:
        since = self._waiting_since
        return min(self._expires_at, math.inf if since is None else since + self._idle_s)

    def _arm(self) -> None:
        when = self._next()
        handle = self._handle
        if handle is not None and handle.when() <= when:
            return  # it fires first and sets itself again for ``when``
        if handle is not None:
            handle.cancel()
        self._handle = None if when == math.inf else self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = self._loop.time() + _EARLY_S
        since = self._waiting_since
        if now >= self._expires_at:
            self.cancel()
            self._close(CloseCode.UNAUTHENTICATED, "token expired")
        elif since is not None and now >= since + self._idle_s:
            self.cancel()
            self._close(CloseCode.GOING_AWAY, "idle timeout")
        else:
            self._arm()
