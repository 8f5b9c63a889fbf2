"""Whose turn it is to write: one transaction at a time, streamed text never far behind.

SQLite writes one transaction at a time, and its calls run in the event loop's thread
(``server.store.sqlite_inline``), so this process's writers queue for their turn here. A
plain first-come queue made streamed text wait for every write queued before it: when
twenty prompts arrived at once, their acks and run starts (a few milliseconds each) stood
in front of the group commit's round, and the first tokens of every reply waited 21 to
142 ms for them (medians per run, bench, paced fan-out). Here a round of the group commit
(``server.store.group_commit``) goes right after the write that holds the turn, and a
write right after a round: each waits for at most one of the other kind per place ahead of
it in its own queue, so neither can starve the other. Only the order between sessions
changes: a session's own writes are one at a time under its writer's lock.
"""

from __future__ import annotations

import asyncio
from collections import deque


class WriterTurns:
    """One writer at a time: writes first come, first served, with a waiting group-commit
    round taking the next turn after each write (``acquire(round_=True)``)."""

    __slots__ = ("_held", "_last_was_round", "_rounds", "_writes")

    def __init__(self) -> None:
        self._held = False
        self._last_was_round = False
        self._writes: deque[asyncio.Future[None]] = deque()
        self._rounds: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        return self._held

    async def acquire(self, *, round_: bool = False) -> None:
        """Wait for the turn (``round_``: a group-commit round's). Cancelled while waiting,
        the caller does not hold it; cancelled just as it was handed over, it is passed on."""
        if not self._held:  # (then nobody waits: a release hands the turn to a waiter)
            self._held = True
            self._last_was_round = round_
            return
        queue = self._rounds if round_ else self._writes
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self.release()  # handed the turn, then cancelled: the next one's
            elif turn in queue:  # (a release drops the cancelled it meets)
                queue.remove(turn)
            raise

    def release(self) -> None:
        """End the holder's turn and hand it on: after a write, to a waiting round first;
        after a round, to a waiting write first."""
        if not self._held:
            raise RuntimeError("release of a turn nobody holds")
        self._held = False
        first, second = (self._writes, self._rounds)
        if not self._last_was_round:
            first, second = second, first
        for queue in (first, second):
            while queue:
                turn = queue.popleft()
                if not turn.done():
                    self._held = True
                    self._last_was_round = queue is self._rounds
                    turn.set_result(None)
                    return
