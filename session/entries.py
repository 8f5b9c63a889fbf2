"""A transcript entry: its kinds, its read-only copy (``Entry``) and its form in the document
(a Y.Map: ``entry_map`` builds it, ``read_entry`` reads it back).

Each entry has ``id``, ``seq``, ``kind`` (``prompt`` | ``message`` | ``reply``), ``author``,
``role`` (``user`` | ``assistant``), ``status``, ``content`` (Y.Text) and ``created_at``
(milliseconds since the epoch). A prompt also has ``reply_id`` and ``started_at`` once it
runs; a reply has ``reply_to`` (the prompt id), ``answers`` (every prompt it answers:
several when a coalesced run answers them together) and shares its prompt's ``seq``; it
is inserted directly after that prompt (the last of them). ``reason`` (a sentence) and
``reason_code`` (``session.reasons.ReasonCode``) are set when a status is ``failed``,
``cancelled`` or ``interrupted``; ``retry_at`` beside them when the cause tells when the
prompt may be sent again (a quota: its next UTC midnight, ms since the epoch). A ``tool``
entry (role ``tool``)
is one step of a reply's tool loop: ``tool`` names it, ``author`` is who the run acted
for, ``reply_to`` is the reply, ``status`` one of ``session.lifecycle.ToolStepStatus``
(``running`` until a call that left the server ends); it sits directly before its reply.
Its ``content`` is what every member may read (details that some may not read stay on the
server).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pycrdt import Map, Text

from parley.session.yitems import NewText

MESSAGE_STATUS = "posted"


class EntryKind(StrEnum):
    PROMPT = "prompt"
    MESSAGE = "message"
    REPLY = "reply"
    TOOL = "tool"


SERVER_REQUEST = "server_request"
"""The ``source`` of a prompt whose text the server wrote for the member who asked it (a
side-thread's summary instruction): given to the model under the server's line."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A read-only copy of one transcript entry."""

    id: str
    seq: int
    kind: EntryKind
    author: str
    role: str
    status: str
    content: str
    created_at: int
    reason: str | None = None
    reason_code: str | None = None
    reply_to: str | None = None
    reply_id: str | None = None
    answers: tuple[str, ...] = ()
    started_at: int | None = None
    tool: str | None = None
    # ``private_thread``: a message shared back from a side-thread; ``SERVER_REQUEST``.
    source: str | None = None
    retry_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seq": self.seq,
            "kind": self.kind.value,
            "author": self.author,
            "role": self.role,
            "status": self.status,
            "content": self.content,
            "created_at": self.created_at,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "reply_to": self.reply_to,
            "reply_id": self.reply_id,
            "answers": list(self.answers),
            "started_at": self.started_at,
            "tool": self.tool,
            "source": self.source,
            "retry_at": self.retry_at,
        }


class ListingLog:
    """Of each listing of one transcript, how many leading entries it shares with the
    listing before it, for the last ``keep`` listings: so a reader of two listings knows
    where they part without comparing them."""

    def __init__(self, keep: int = 64) -> None:
        self.generation = 0  # the newest listing's number
        self._shared: deque[int] = deque(maxlen=keep)

    def listed(self, shared: int) -> int:
        """Number a new listing that shares its first ``shared`` entries with the last."""
        self.generation += 1
        self._shared.append(shared)
        return self.generation

    def shared(self, since: int, now: int) -> int | None:
        """How many leading entries listing ``now`` shares with listing ``since`` at least
        (None: not known, the listings are too far apart)."""
        if since == now:
            return None if now == 0 else 1 << 62  # one listing: all of it
        oldest = self.generation - len(self._shared) + 1  # the oldest listing logged
        if not oldest - 1 <= since < now <= self.generation:
            return None
        return min(self._shared[i] for i in range(since + 1 - oldest, now + 1 - oldest))


class Listing(list[Entry]):
    """Entries in story order as a document listed them, numbered in its ``log``."""

    __slots__ = ("generation", "log")

    def __init__(self, entries: Iterable[Entry], log: ListingLog, generation: int) -> None:
        super().__init__(entries)
        self.log = log
        self.generation = generation


def entry_fields(
    *,
    id: str,
    seq: int,
    kind: EntryKind,
    author: str,
    role: str,
    status: str,
    text: str,
    created_at: int,
    **extra: Any,
) -> dict[str, Any]:
    """An entry's fields in the order its map is written, ``content`` as a ``NewText``."""
    return {
        "id": id,
        "seq": seq,
        "kind": kind.value,
        "author": author,
        "role": role,
        "status": status,
        "content": NewText(text),
        "created_at": created_at,
        **extra,
    }


def entry_map(fields: dict[str, Any]) -> Map[Any]:
    """The prelim map of ``entry_fields``, for pycrdt to write."""
    return Map({k: Text(v) if isinstance(v, NewText) else v for k, v in fields.items()})


def read_entry(entry: Map[Any]) -> Entry:
    """The entry's copy, read from its map in one pass (the map's JSON, nested text
    included: each field read on its own cost a transaction of the document's)."""
    return entry_from_fields(json.loads(str(entry)))


def entry_from_fields(fields: Mapping[str, Any]) -> Entry:
    """The entry's copy from its fields as plain values (``content`` a string)."""

    def optional(key: str) -> str | None:
        value = fields.get(key)
        return None if value is None else str(value)

    started_at, retry_at = fields.get("started_at"), fields.get("retry_at")
    return Entry(
        id=str(fields["id"]),
        seq=int(fields["seq"]),
        kind=EntryKind(fields["kind"]),
        author=str(fields["author"]),
        role=str(fields["role"]),
        status=str(fields["status"]),
        content=str(fields["content"]),
        created_at=int(fields["created_at"]),
        reason=optional("reason"),
        reason_code=optional("reason_code"),
        reply_to=optional("reply_to"),
        reply_id=optional("reply_id"),
        answers=tuple(str(a) for a in fields.get("answers") or ()),
        started_at=None if started_at is None else int(started_at),
        tool=optional("tool"),
        source=optional("source"),
        retry_at=None if retry_at is None else int(retry_at),
    )
