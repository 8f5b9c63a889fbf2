"""A typed, read-only view of a session's shared document (docs/document.md),
and the changes between two views."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pycrdt import Array, Doc, Map


@dataclass(frozen=True, slots=True)
class Entry:
    """One transcript entry. ``content`` is the text so far (a reply streams into it while
    its ``status`` is ``streaming``)."""

    id: str
    seq: int
    kind: str  # prompt, message, reply, tool
    author: str
    role: str  # user, assistant, tool
    status: str
    content: str
    created_at: int
    reason: str | None = None
    reason_code: str | None = None
    reply_id: str | None = None
    reply_to: str | None = None
    answers: tuple[str, ...] = ()
    started_at: int | None = None
    tool: str | None = None
    source: str | None = None  # "private_thread": shared back from a member's side-thread
    # When a failed prompt (and its reply) may be sent again, in milliseconds since the
    # epoch (UTC): a token quota's next midnight (reason_code "quota_exceeded"); else None.
    retry_at: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        def text(key: str) -> str | None:
            value = data.get(key)
            return None if value is None or value == "" else str(value)

        def number(key: str) -> int | None:
            value = data.get(key)
            return None if value is None else int(value)

        return cls(
            id=str(data["id"]),
            seq=int(data.get("seq", 0)),
            kind=str(data.get("kind", "")),
            author=str(data.get("author", "")),
            role=str(data.get("role", "")),
            status=str(data.get("status", "")),
            content=str(data.get("content") or ""),
            created_at=int(data.get("created_at", 0)),
            reason=text("reason"),
            reason_code=text("reason_code"),
            reply_id=text("reply_id"),
            reply_to=text("reply_to"),
            answers=tuple(str(a) for a in data.get("answers") or ()),
            started_at=number("started_at"),
            tool=text("tool"),
            source=text("source"),
            retry_at=number("retry_at"),
        )

    @property
    def settled(self) -> bool:
        """True once the entry will not change again (done, failed, cancelled, …)."""
        return self.status not in ("queued", "running", "streaming")


@dataclass(frozen=True, slots=True)
class QueuedPrompt:
    """A prompt waiting to run; ``position`` 1 runs next."""

    id: str
    seq: int
    author: str
    position: int


@dataclass(frozen=True, slots=True)
class Peer:
    """Someone present: one awareness client (a user with two tabs is two peers)."""

    client_id: int
    user_id: str | None  # stamped by the server
    state: dict[str, Any]

    @property
    def typing(self) -> bool:
        return bool(self.state.get("typing"))


def _as_written(value: Any) -> Any:
    """A value of the document as the server wrote it: Yjs keeps every number as a double,
    so a whole number (``schema_version``: 1) reads back as a float (1.0)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The document at one moment: transcript, queue, session settings, pins, facts."""

    entries: tuple[Entry, ...] = ()
    queue: tuple[QueuedPrompt, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)  # session_id, title, policy, …
    pins: tuple[str, ...] = ()
    facts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, doc: Doc[Any]) -> Snapshot:
        # One ``to_py`` per root: walking shared types item by item costs far more.
        entries = doc.get("transcript", type=Array).to_py() or []
        queue = doc.get("queue", type=Array).to_py() or []
        return cls(
            entries=tuple(Entry.from_json(e) for e in entries),
            queue=tuple(
                QueuedPrompt(str(q["id"]), int(q.get("seq", 0)), str(q.get("author", "")), n)
                for n, q in enumerate(queue, start=1)
            ),
            meta={k: _as_written(v) for k, v in (doc.get("meta", type=Map).to_py() or {}).items()},
            pins=tuple(str(p) for p in doc.get("pins", type=Array).to_py() or ()),
            facts={str(k): str(v) for k, v in (doc.get("facts", type=Map).to_py() or {}).items()},
        )

    def entry(self, entry_id: str) -> Entry | None:
        for item in self.entries:
            if item.id == entry_id:
                return item
        return None

    def position(self, prompt_id: str) -> int | None:
        for item in self.queue:
            if item.id == prompt_id:
                return item.position
        return None


@dataclass(frozen=True, slots=True)
class Change:
    """What changed since the last change an iterator yielded: entries ``added`` and
    ``updated`` (status, reply text, …), whether the queue changed, and the transcript as
    it is now. Changes that came while the consumer was busy are merged into one."""

    added: tuple[Entry, ...]
    updated: tuple[Entry, ...]
    queue_changed: bool
    snapshot: Snapshot

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self.snapshot.entries


def diff(before: Snapshot, after: Snapshot) -> Change | None:
    """The change from ``before`` to ``after``; None if the transcript and queue are equal."""
    old = {e.id: e for e in before.entries}
    added = tuple(e for e in after.entries if e.id not in old)
    updated = tuple(e for e in after.entries if e.id in old and old[e.id] != e)
    queue_changed = before.queue != after.queue
    if not (added or updated or queue_changed):
        return None
    return Change(added, updated, queue_changed, after)
