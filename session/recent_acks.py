"""The acknowledgements a session sent lately, to answer a resent command the same way.

A client that lost its socket resends every command it has no answer for (Parley's SDKs
pace them under the command rate; other clients may send them all at once). The store knows
the prompts and messages it holds by their command ids, but not a cancel, a pin or a
side-thread's deletion, and a command carried out again may be answered differently (a
cancelled prompt is no longer cancellable; a deleted thread is not found) or refused by the
rate limits the resend burst runs into, which a client then retries as a new command. So a
session keeps its last acknowledgements in memory, and a command resent with the same
content gets the same answer past the command rate, within the member's resend allowance
(it costs a look-up). One resent with different content is a conflict, as the docs promise.
Kept per session, for its last ``MAX_KEPT`` acknowledgements, at most ``MAX_PER_AUTHOR``
of one member's (so one member's commands cannot push out everyone else's); a restart or
a failover forgets them. The store answers after those: prompts and messages are known by
the entries it holds, and the commands that store no entry (a pin, a fact, a policy, a
cancel, a side-thread's close) by the acks kept with what they wrote, for
``STORED_ACKS_KEPT_MS`` (review: a pin resent after a restart pinned again what another
member had unpinned meanwhile). So are a side-thread's open and prompts, whose rows go
when the thread is deleted (review: an open and a delete resent after a restart opened
the deleted thread again, under a new id). A command that wrote nothing (a pin of a
pinned entry) has no ack kept: resent, it is judged again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import OrderedDict
from dataclasses import MISSING
from typing import Any

from parley.session.commands import CancelCommand, Command, FactCommand, PinCommand, PolicyCommand
from parley.session.errors import DuplicateCommand
from parley.session.thread_commands import (
    ThreadCloseCommand,
    ThreadOpenCommand,
    ThreadPromptCommand,
)

MAX_KEPT = 256
MAX_PER_AUTHOR = 64
# How long the store keeps the acks of commands that store no entry (``command_acks``): a
# resend after a restart comes within seconds or minutes; a day covers a long outage.
STORED_ACKS_KEPT_MS = 24 * 3600 * 1000


def asked(command: Command) -> str:
    """What a command asks, whatever its id, as text that stays the same from release to
    release: its type and the fields it sets (a field at its default is left out, so a
    release that gives a command a new optional field still knows the ones sent before
    it, where the command's ``repr`` made their resends a conflict)."""
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(command):
        value = getattr(command, field.name)
        if field.name != "id" and (field.default is MISSING or value != field.default):
            fields[field.name] = value
    return json.dumps([type(command).__name__, fields], sort_keys=True, ensure_ascii=False)


def fingerprint(command: Command) -> int:
    """``asked`` as a hash, for this process's recent acks."""
    return hash(asked(command))


_KEPT_AS_ACK = (
    CancelCommand,
    PolicyCommand,
    PinCommand,
    FactCommand,
    ThreadOpenCommand,
    ThreadPromptCommand,
    ThreadCloseCommand,
)


def kept_as_ack(command: Command) -> bool:
    """Whether the store knows ``command`` by its kept ack (``command_acks``): a command
    that stores no entry, or only side-thread rows, which a deletion takes away."""
    return isinstance(command, _KEPT_AS_ACK)


def stored_fingerprint(command: Command) -> str:
    """``asked`` hashed the same in every process (the store keeps it: ``command_acks``)."""
    return hashlib.sha256(asked(command).encode()).hexdigest()


def stored_fingerprints(command: Command) -> tuple[str, str]:
    """The fingerprints a kept ack of ``command`` may have: ``stored_fingerprint``, and the
    one of the releases before it (its ``repr``), for acks they kept (a day's)."""
    legacy = hashlib.sha256(repr(dataclasses.replace(command, id="")).encode()).hexdigest()
    return stored_fingerprint(command), legacy


class RecentAcks:
    def __init__(self, max_kept: int = MAX_KEPT, max_per_author: int = MAX_PER_AUTHOR) -> None:
        self.max_kept = max_kept
        self.max_per_author = max_per_author
        self._acks: OrderedDict[tuple[str, str], tuple[int, str]] = OrderedDict()
        self._mine: dict[str, OrderedDict[str, None]] = {}  # each author's ids, oldest first

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
        mine = self._mine.setdefault(author, OrderedDict())
        mine[command.id] = None
        mine.move_to_end(command.id)
        if len(mine) > self.max_per_author:
            self._forget((author, next(iter(mine))))
        while len(self._acks) > self.max_kept:
            self._forget(next(iter(self._acks)))

    def _forget(self, key: tuple[str, str]) -> None:
        author, command_id = key
        self._acks.pop(key, None)
        mine = self._mine.get(author)
        if mine is not None:
            mine.pop(command_id, None)
            if not mine:
                del self._mine[author]
