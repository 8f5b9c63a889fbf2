"""Turns on a shared budget, round-robin between the users waiting for it.

A budget shared by a session's members (its stream work, say) goes to whoever asks first
once it has room: a member with sixteen waiters then takes sixteen turns to another's one
(review RA-4: another member's replay took 40 s against 1 s). Here a turn goes to the
user first in line, and a user who takes one goes to the back while they still wait: each
waiting user takes one turn a round, however many waiters they have.
"""

from __future__ import annotations


class FairTurns:
    """Who waits for a shared budget, by user, in turn order (no clock, no I/O)."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        # Waiters by user, the user whose turn is next first (dicts keep insertion order).
        self._waiting: dict[str, int] = {}

    def first(self) -> str | None:
        """The user whose turn is next (None: nobody waits)."""
        return next(iter(self._waiting), None)

    def is_turn(self, user_id: str) -> bool:
        """Whether ``user_id`` may take the budget now: nobody waits, or they are first."""
        first = self.first()
        return first is None or first == user_id

    def wait(self, user_id: str) -> None:
        """A waiter of ``user_id`` joins; a user not waiting yet goes to the back."""
        self._waiting[user_id] = self._waiting.get(user_id, 0) + 1

    def leave(self, user_id: str, *, took_turn: bool) -> None:
        """A waiter of ``user_id`` leaves: having taken its turn (its user goes to the back,
        if they still wait) or not (a stream ended while it waited: they keep their place)."""
        left = self._waiting.pop(user_id) - 1 if took_turn else self._waiting[user_id] - 1
        if left > 0:
            self._waiting[user_id] = left
        else:
            self._waiting.pop(user_id, None)

    def waiting(self) -> list[str]:
        """The waiting users, in turn order."""
        return list(self._waiting)
