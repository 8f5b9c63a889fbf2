"""The acknowledgements a session sent lately, to answer a resent command the same way.

A client that lost its socket resends every command it has no answer for, at once (both
SDKs do). The store knows the prompts and messages it holds by their command ids, but
not a cancel, a pin or a side-thread's deletion, and a command carried out again may be
answered differently (a cancelled prompt is no longer cancellable; a deleted thread is not
found) or refused by the rate limits the resend burst runs into, which a client then
retries as a new command. So a session keeps its last acknowledgements in memory, and a
command resent with the same content gets the same answer, without the rate limits (it
costs a look-up). One resent with different content is a conflict, as the docs promise.
Kept per session, for its last ``MAX_KEPT`` acknowledgements; a restart forgets them (the
store's own answers remain for prompts and messages).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

from parley.session.commands import Command
from parley.session.errors import DuplicateCommand

MAX_KEPT = 256


def fingerprint(command: Command) -> int:
    """What a command asks, whatever its id (a hash of its type and other fields)."""
    return hash(repr(replace(command, id="")))


class RecentAcks:
    def __init__(self, max_kept: int = MAX_KEPT) -> None:
        self.max_kept = max_kept
        self._acks: OrderedDict[tuple[str, str], tuple[int, str]] = OrderedDict()

    def knows(self, author: str, command_id: str | None) -> bool:
        """Whether ``author``'s ``command_id`` was acknowledged lately."""
        return command_id is not None and (author, command_id) in self._acks

    def answer(self, author: str, command: Command) -> str | None:
        """The acknowledgement ``command`` got when first sent, if lately; ``Conflict`` if
        that id asked for something else."""
        kept = self._acks.get((author, command.id))
        if kept is None:
            return None
        asked, reply = kept
        if asked != fingerprint(command):
            raise DuplicateCommand(command.id)
        return reply

    def keep(self, author: str, command: Command, reply: str) -> None:
        key = (author, command.id)
        self._acks[key] = (fingerprint(command), reply)
        self._acks.move_to_end(key)
        while len(self._acks) > self.max_kept:
            self._acks.popitem(last=False)
