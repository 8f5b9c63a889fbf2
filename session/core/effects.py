"""What the session core decides a command does, as data the room carries out.

The room applies ``Effects`` through its one writer, in this order: the ``entry`` is
stored (the store checks the seq it hands out against ``entry.seq``), ``finish`` sets
statuses, ``change`` edits the document, ``queue`` replaces the queue and its plan,
``audit`` is written in the same transaction; after the commit the update is broadcast,
``stop`` stops the run in flight, ``wake_runner`` lets the next run start, and the
command is answered with ``ack``. A refusal carries ``error`` (and the ``audit`` of the
refusal, written on its own) and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from session.commands import ack
from session.errors import ParleyError
from session.queue import OrderingQueue, Policy
from session.reasons import Ending
from session.schema import EntryKind


@dataclass(frozen=True, slots=True)
class NewEntry:
    """A transcript entry to store (row and document alike) with sequence number ``seq``."""

    id: str
    kind: EntryKind
    author: str
    command_id: str
    text: str
    seq: int
    status: str
    created_at: int


@dataclass(frozen=True, slots=True)
class Finish:
    """Prompts that reach the final status ``ending`` decides."""

    prompt_ids: tuple[str, ...]
    ending: Ending


@dataclass(frozen=True, slots=True)
class Pin:
    entry_id: str
    pinned: bool


@dataclass(frozen=True, slots=True)
class SetFact:
    key: str
    value: str | None  # None removes the fact
    author: str


@dataclass(frozen=True, slots=True)
class SetPolicy:
    policy: Policy


DocumentChange = Pin | SetFact | SetPolicy


@dataclass(frozen=True, slots=True)
class AuditRecord:
    kind: str
    actor: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class StopRun:
    """Stop the run in flight with ``ending``; ``wait``: answer only once it has stopped."""

    ending: Ending
    wait: bool


@dataclass(frozen=True, slots=True)
class Ack:
    """The fields of a command's acknowledgement: its seq and the ids it names."""

    seq: int | None
    ids: tuple[tuple[str, str], ...] = ()

    def reply(self, command_id: str) -> str:
        return ack(command_id, seq=self.seq, **dict(self.ids))


@dataclass(frozen=True, slots=True)
class Effects:
    """Everything one command does; see the module docstring for the order."""

    ack: Ack | None = None
    error: ParleyError | None = None
    entry: NewEntry | None = None
    finish: tuple[Finish, ...] = ()
    change: DocumentChange | None = None
    queue: OrderingQueue | None = None  # the queue after the change; None: unchanged
    audit: tuple[AuditRecord, ...] = ()
    stop: StopRun | None = None
    wake_runner: bool = False

    @property
    def writes(self) -> bool:
        """True when carrying this out changes the store or the document."""
        return (
            self.entry is not None
            or bool(self.finish)
            or self.change is not None
            or self.queue is not None
        )


def refused(error: ParleyError, *audit: AuditRecord) -> Effects:
    return Effects(error=error, audit=audit)
