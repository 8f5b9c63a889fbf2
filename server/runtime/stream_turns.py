"""The session's stream work, taken in turn by the members whose replays wait for it.

``session.fair_turns`` says whose turn it is; this wakes them. The user first in line
waits for the budget to be paid back (as long as the bucket says, not a fixed poll); the
others wait to be woken when the line moves: a member with one stream is not left to
look once a poll while another's sixteen streams catch every refill between them
(review RA-4).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from parley.session.fair_turns import FairTurns


class StreamTurns:
    """Turns on one session's stream work (``Work.STREAMS``), on this node."""

    def __init__(self) -> None:
        self.turns = FairTurns()
        self._woken: dict[str, asyncio.Event] = {}  # set when the user's turn comes

    async def take(
        self,
        user_id: str,
        owed_s: Callable[[], float],
        check: Callable[[], None],
        look_s: float,
    ) -> None:
        """Return once it is ``user_id``'s turn and the work owed (``owed_s``: seconds
        until paid) is paid. ``check`` is asked at least every ``look_s`` while it waits
        (it raises to end the wait: a shutdown, the reader's access taken)."""
        turns = self.turns
        if turns.is_turn(user_id) and owed_s() <= 0:
            return
        turns.wait(user_id)
        took = False
        try:
            while True:
                if turns.is_turn(user_id):
                    wait_s = owed_s()
                    if wait_s <= 0:
                        took = True
                        return
                    await asyncio.sleep(min(wait_s, look_s))
                else:
                    woken = self._woken.setdefault(user_id, asyncio.Event())
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(look_s):
                            await woken.wait()
                check()
        finally:
            turns.leave(user_id, took_turn=took)
            if user_id not in turns.waiting():  # no waiter of theirs is left to wake
                self._woken.pop(user_id, None)
            first = turns.first()
            if first is not None and first in self._woken:
                self._woken.pop(first).set()
