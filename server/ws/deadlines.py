"""One timer per socket for both of its deadlines: its token's expiry, and the idle timeout
while it waits for a frame.

An ``asyncio.timeout`` around every read (a ``Timeout`` and a timer handle, made anew for
each frame) beside a ``call_later`` for the expiry cost an idle socket about 1.2 kB
(``python -m bench.connection_memory``). Here a frame costs two assignments: the timer is
moved only when a deadline comes earlier than the time it is set for, and a timer that
fires before a deadline (the socket read a frame since) is set again for the next one.

The timers themselves are shared: a deadline is put in the tick (``TICK_S``) it falls in,
and one loop timer per tick serves every socket due in it (``Ticks``; the keepalive pings
of ``server.ws.uvicorn_protocol`` use them too). A timer of its own cost each socket about
300 B (a ``TimerHandle`` with its context and bound method, and the loop's heap entry;
issue #22); a place in a tick's set costs a few dozen. A deadline is met up to one tick
late (half a second: a token's expiry, a ping every 20 s and the idle timeout of minutes
are not exact to the millisecond anyway).
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from parley.session.closes import CloseCode

# A timer may run up to the loop's clock resolution before its time: a deadline this
# close is reached.
_EARLY_S = 0.001
# Deadlines are met on the first tick at or after them (one not yet past, at once).
TICK_S = 0.5


class Due(Protocol):
    """What waits in a tick: called once on it (``on_tick``)."""

    def on_tick(self) -> None: ...


class Ticks:
    """A loop's socket deadlines, by the tick they fall in: one timer per tick that has
    any, cancelled when its last socket leaves it."""

    __slots__ = ("_due", "_timers")  # not the loop: it is this object's key (``_LOOPS``)

    def __init__(self) -> None:
        self._due: dict[int, set[Due]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def add(self, due: Due, when: float, loop: asyncio.AbstractEventLoop) -> int:
        """Call ``due.on_tick`` on the first tick at or after ``when``; the tick."""
        tick = math.ceil(when / TICK_S)
        waiting = self._due.get(tick)
        if waiting is None:
            waiting = self._due[tick] = set()
            self._timers[tick] = loop.call_at(tick * TICK_S, self._fire, tick)
        waiting.add(due)
        return tick

    def discard(self, due: Due, tick: int) -> None:
        waiting = self._due.get(tick)
        if waiting is None:
            return
        waiting.discard(due)
        if not waiting:
            del self._due[tick]
            self._timers.pop(tick).cancel()

    def _fire(self, tick: int) -> None:
        self._timers.pop(tick, None)
        for due in self._due.pop(tick, ()):
            due.on_tick()


_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Ticks] = weakref.WeakKeyDictionary()


def ticks_of(loop: asyncio.AbstractEventLoop) -> Ticks:
    """The ticks of ``loop`` (one set of them per loop)."""
    ticks = _LOOPS.get(loop)
    if ticks is None:
        ticks = _LOOPS[loop] = Ticks()
    return ticks


class Answers(Protocol):
    """Where a socket's answers to the server's keep-alive pings are seen (``DirectWriter``)."""

    answered_at: float  # the loop's clock at the latest one


class SocketDeadlines:
    """Closes the socket (``close(code, reason)``) once ``expires_in_s`` has passed (4401,
    token expired), or once it has waited ``idle_s`` for a frame (1001, idle timeout: between
    ``waiting`` and ``received``) and answered none of the server's keep-alive pings
    (``answers``) meanwhile; then never again. ``cancel`` when the socket is done.

    The idle timeout is for dead and abandoned sockets: a pong answering the server's ping
    is a sign of life as good as a frame. A stock client that shows no presence of its own
    sends nothing else in a quiet session, and was closed 1001 every two minutes, then
    synced the whole document again (review R2-4)."""

    __slots__ = (
        "_answers",
        "_close",
        "_expires_at",
        "_idle_s",
        "_loop",
        "_tick",
        "_ticks",
        "_waiting_since",
    )

    def __init__(
        self,
        expires_in_s: float,
        idle_s: float,
        close: Callable[[CloseCode, str], object],
        answers: Answers | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._expires_at = self._loop.time() + max(expires_in_s, 0.0)
        self._idle_s = idle_s
        self._close = close
        self._answers = answers
        self._waiting_since: float | None = None
        self._ticks = ticks_of(self._loop)
        self._tick: int | None = None  # the tick it is due in, if any
        self._arm()

    def waiting(self) -> None:
        """The socket starts waiting for a frame: its idle deadline runs from now."""
        self._waiting_since = self._loop.time()
        self._arm()

    def received(self) -> None:
        """A frame came: no idle deadline while the socket handles it."""
        self._waiting_since = None

    def cancel(self) -> None:
        if self._tick is not None:
            self._ticks.discard(self, self._tick)
            self._tick = None
        self._waiting_since = None
        self._expires_at = math.inf

    def _next(self) -> float:
        since = self._waiting_since
        return min(self._expires_at, math.inf if since is None else since + self._idle_s)

    def _arm(self) -> None:
        when = self._next()
        tick = self._tick
        if tick is not None and tick * TICK_S <= when:
            return  # it fires first and sets itself again for ``when``
        if tick is not None:
            self._ticks.discard(self, tick)
            self._tick = None
        if when <= self._loop.time():  # past already (a token expired before it came)
            self._loop.call_soon(self.on_tick)
        elif when != math.inf:
            self._tick = self._ticks.add(self, when, self._loop)

    def on_tick(self) -> None:
        self._tick = None
        now = self._loop.time() + _EARLY_S
        since = self._waiting_since
        if now >= self._expires_at:
            self.cancel()
            self._close(CloseCode.UNAUTHENTICATED, "token expired")
        elif since is not None and now >= since + self._idle_s:
            answered = -math.inf if self._answers is None else self._answers.answered_at
            if answered > since:  # alive meanwhile: idle from its latest answer
                self._waiting_since = answered
                self._arm()
                return
            self.cancel()
            self._close(CloseCode.GOING_AWAY, "idle timeout")
        else:
            self._arm()


class _Closable(Protocol):
    claims: Any

    def close(self, code: CloseCode, reason: str = "") -> None: ...


def token_expired(connection: _Closable, now: float) -> bool:
    """Close ``connection`` if its token expired by ``now`` (the wall clock every door
    judges by); True if so. The expiry's timer runs on the loop's clock, set when the
    socket opened: a wall clock stepped forward since left sockets open on a token every
    other door refused (review), so each frame is judged too."""
    claims = connection.claims
    if claims is None or claims.expires_at > now:
        return False
    connection.close(CloseCode.UNAUTHENTICATED, "token expired")
    return True
