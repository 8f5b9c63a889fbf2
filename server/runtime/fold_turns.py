"""Turns at folding ahead one fold (``SessionContext.fold_ahead``).

One fold ahead at a time folds a fold: two at once undid each other's steps, round after
round. A caller that holds the session's writer (a run cut off by a crash, counted as the
session loads) goes before those waiting, and the one folding gives way to it between its
steps (``wanted_first``): behind the summary plan's fold ahead of the whole history it
waited up to ~1 s at 20,000 entries, and every write of the session with it.
"""

from __future__ import annotations

import asyncio
from collections import deque

_Waiter = tuple[object, asyncio.Future[None]]


class FoldTurn:
    """Whose turn it is to fold one fold. ``take`` waits for it, ``give`` hands it to the
    next waiting (those that go first, then the others, each in order of arrival). A
    holder is any object its caller keeps, so that only the holder gives the turn."""

    def __init__(self) -> None:
        self.users = 0  # holding or waiting: the turn is dropped when none is left
        self._holder: object | None = None
        self._first: deque[_Waiter] = deque()
        self._others: deque[_Waiter] = deque()

    @property
    def wanted_first(self) -> bool:
        """Whether a caller that goes first waits (the holder gives way between steps)."""
        return any(not waiter.done() for _, waiter in self._first)

    async def take(self, holder: object, *, first: bool = False) -> None:
        """Wait for the turn (``first``: before any other waiting)."""
        if self._holder is None and not self._first and not self._others:
            self._holder = holder
            return
        waiting = (holder, asyncio.get_running_loop().create_future())
        queue = self._first if first else self._others
        queue.append(waiting)
        try:
            await waiting[1]
        except asyncio.CancelledError:
            if self._holder is holder:  # handed over as it was cancelled: on to the next
                self.give(holder)
            elif waiting in queue:
                queue.remove(waiting)
            raise

    def give(self, holder: object) -> None:
        """Hand the turn on, if ``holder`` has it (synchronous: a cancelled holder never
        keeps it)."""
        if self._holder is not holder:
            return
        for queue in (self._first, self._others):
            while queue:
                next_holder, waiter = queue.popleft()
                if not waiter.done():
                    self._holder = next_holder
                    waiter.set_result(None)
                    return
        self._holder = None

    async def give_way(self, holder: object) -> None:
        """Let those that go first fold, then take the turn again."""
        self.give(holder)
        await self.take(holder)
