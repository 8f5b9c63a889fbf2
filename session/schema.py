"""The shared document of a session: its roots, its entries, and the only ways to change them.

Roots (all written by the server only; clients read):

``transcript`` — Y.Array of Y.Map, the story of the session in sequence order; the entries'
    fields and kinds are described in ``session.entries``.
``queue`` — Y.Array of Y.Map ``{id, seq, author}``: prompts waiting to run, in the order they
    will run (position = index + 1); ``session.queue_root`` plans its edits and reads it back.
``meta`` — Y.Map: ``session_id``, ``title``, ``policy``, ``schema_version``.
``pins`` — Y.Array of entry ids: messages that always stay in the model's input.
``facts`` — Y.Map of ``key → value`` strings: session facts that always stay in it.
``fact_authors`` — Y.Map of ``key → user id``: who set each fact (``""``: the admin API).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from pycrdt import Array, Doc, Map, Text, TransactionEvent

from parley.session.attribution import Fact
from parley.session.entries import MESSAGE_STATUS, Entry, EntryKind, entry_map, read_entry
from parley.session.errors import InvalidInput, NotFound
from parley.session.lifecycle import (
    PromptStatus,
    ReplyStatus,
    check_prompt_transition,
    check_reply_transition,
)
from parley.session.observers import observe_weakly
from parley.session.queue_root import queue_edits
from parley.session.reasons import Ending

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class QueuedItem:
    id: str
    seq: int
    author: str


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _mutator(
    method: Callable[Concatenate[SessionDocument, _P], _R],
) -> Callable[Concatenate[SessionDocument, _P], _R]:
    """Mark a method that changes the document and keeps the mirrors in step itself."""

    def mutate(self: SessionDocument, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        self._current()
        self._own = True
        try:
            return method(self, *args, **kwargs)
        finally:
            self._own = False

    functools.update_wrapper(mutate, method)
    return mutate


class SessionDocument:
    """Typed access to a session's pycrdt document.

    Every mutation made here goes through a method here, so the schema and the lifecycle
    rules are enforced in one place. Each public mutator runs in one transaction, so it
    reaches clients as one update. Updates made elsewhere (a read replica applying what the
    running node wrote, say) are applied to ``doc`` directly: the mirrors notice and follow.
    """

    def __init__(self, doc: Doc[Any]) -> None:
        self.doc = doc
        self.transcript: Array[Any] = doc.get("transcript", type=Array)
        self.queue: Array[Any] = doc.get("queue", type=Array)
        self.meta: Map[Any] = doc.get("meta", type=Map)
        self.pins: Array[Any] = doc.get("pins", type=Array)
        self.facts: Map[Any] = doc.get("facts", type=Map)
        self.fact_authors: Map[Any] = doc.get("fact_authors", type=Map)
        # Mirrors of the document kept in step by the mutators, so that reading the story
        # costs dictionary look-ups, not a walk through the CRDT, on every run.
        self._order: list[str] = []
        self._entries: dict[str, Map[Any]] = {}
        self._copies: dict[str, Entry] = {}
        # The copies in story order, kept for ``entries``: the first ``_listed_valid`` are
        # current. A mutator takes the entries it changes through ``_entry``, which moves
        # that mark back (an insert too: it takes the entry it goes next to).
        self._listed: list[Entry] = []
        self._listed_valid = 0
        self._queue_ids: list[str] = []
        # True while a mutator runs; any other change marks the mirrors stale, and they are
        # rebuilt on their next use (once per read, however many updates arrived).
        self._own = False
        self._stale = False
        observe_weakly(doc, self._changed)
        self._reindex()

    def _changed(self, event: TransactionEvent) -> None:
        if not self._own:
            self._stale = True

    def _current(self) -> None:
        if self._stale:
            self._reindex()

    def _reindex(self) -> None:
        self._stale = False
        self._order = []
        self._entries = {}
        self._copies = {}
        self._listed_valid = 0
        for entry in self.transcript:
            entry_id = str(entry["id"])
            self._order.append(entry_id)
            self._entries[entry_id] = entry
        self._queue_ids = [str(item["id"]) for item in self.queue]

    # -- writing ---------------------------------------------------------------------------

    @_mutator
    def init_meta(self, session_id: str, title: str, policy: str) -> None:
        with self.doc.transaction():
            self.meta["session_id"] = session_id
            self.meta["title"] = title
            self.meta["policy"] = policy
            self.meta["schema_version"] = SCHEMA_VERSION

    @_mutator
    def set_policy(self, policy: str) -> None:
        self.meta["policy"] = policy

    @_mutator
    def set_title(self, title: str) -> None:
        self.meta["title"] = title

    @_mutator
    def pin(self, entry_id: str) -> bool:
        """Pin an entry; False if it was pinned already."""
        self._entry(entry_id)
        if entry_id in self.pinned():
            return False
        self.pins.append(entry_id)
        return True

    @_mutator
    def unpin(self, entry_id: str) -> bool:
        for index, pinned in enumerate(self.pins):
            if pinned == entry_id:
                del self.pins[index]
                return True
        return False

    @_mutator
    def set_fact(self, key: str, value: str | None, author: str) -> None:
        """Set a fact as ``author`` (``""``: the admin API), or remove it with ``None``."""
        with self.doc.transaction():
            if value is None:
                for kept in (self.facts, self.fact_authors):
                    if key in kept:
                        del kept[key]
            else:
                self.facts[key] = value
                self.fact_authors[key] = author

    def pinned(self) -> list[str]:
        return [str(p) for p in self.pins]

    def fact_map(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.facts.items()}

    def facts_with_authors(self) -> dict[str, Fact]:
        """Every fact with who set it (None for a fact set before authors were kept)."""
        authors = {str(k): str(v) for k, v in self.fact_authors.items()}
        return {key: Fact(value, authors.get(key)) for key, value in self.fact_map().items()}

    @_mutator
    def add_prompt(self, *, id: str, seq: int, author: str, text: str, created_at: int) -> None:
        """Append a queued prompt; the caller lists it in ``queue`` with ``set_queue``."""
        with self.doc.transaction():
            self._append(
                id=id,
                seq=seq,
                kind=EntryKind.PROMPT,
                author=author,
                role="user",
                status=PromptStatus.QUEUED.value,
                text=text,
                created_at=created_at,
            )

    @_mutator
    def add_message(
        self,
        *,
        id: str,
        seq: int,
        author: str,
        text: str,
        created_at: int,
        source: str | None = None,
    ) -> None:
        """Append a message; ``source`` ``private_thread``: shared back from a side-thread."""
        extra = {} if source is None else {"source": source}
        with self.doc.transaction():
            self._append(
                id=id,
                seq=seq,
                kind=EntryKind.MESSAGE,
                author=author,
                role="user",
                status=MESSAGE_STATUS,
                text=text,
                created_at=created_at,
                **extra,
            )

    @_mutator
    def start_reply(
        self, *, prompt_ids: Sequence[str], reply_id: str, author: str, created_at: int
    ) -> None:
        """Mark queued prompts running and insert their one reply directly after the last.

        Several prompts share a reply when a coalesced run answers them together; the reply's
        ``reply_to`` is the last of them and ``answers`` lists them all.
        """
        prompts = self._distinct(prompt_ids)
        if not prompts:
            raise ValueError("a reply answers at least one prompt")
        for prompt in prompts:  # check everything before changing anything
            check_prompt_transition(PromptStatus(prompt["status"]), PromptStatus.RUNNING)
        with self.doc.transaction():
            for prompt in prompts:
                prompt["status"] = PromptStatus.RUNNING.value
                prompt["reply_id"] = reply_id
                prompt["started_at"] = created_at
            last = max(self._position(p) for p in prompt_ids)
            index = last + 1
            entry = entry_map(
                id=reply_id,
                seq=int(self._entries[self._order[last]]["seq"]),
                kind=EntryKind.REPLY,
                author=author,
                role="assistant",
                status=ReplyStatus.STREAMING.value,
                text="",
                created_at=created_at,
                reply_to=self._order[last],
                answers=list(prompt_ids),
            )
            self.transcript.insert(index, entry)
            self._order.insert(index, reply_id)
            self._entries[reply_id] = entry  # integrated now: no walk to ``index`` again

    @_mutator
    def add_tool_step(
        self,
        *,
        id: str,
        reply_id: str,
        author: str,
        tool: str,
        status: str,
        text: str,
        created_at: int,
    ) -> None:
        """Insert one tool step of a running reply directly before the reply."""
        reply = self._entry(reply_id)
        index = self._position(reply_id)
        entry = entry_map(
            id=id,
            seq=int(reply["seq"]),
            kind=EntryKind.TOOL,
            author=author,
            role="tool",
            status=status,
            text=text,
            created_at=created_at,
            reply_to=reply_id,
            tool=tool,
        )
        with self.doc.transaction():
            self.transcript.insert(index, entry)
        self._order.insert(index, id)
        self._entries[id] = entry

    @_mutator
    def set_queue(self, planned: Sequence[QueuedItem]) -> None:
        """Make the ``queue`` root list ``planned`` with the fewest edits (``queue_edits``)."""
        wanted = [item.id for item in planned]
        if self._queue_ids == wanted:
            return
        deleted, inserted = queue_edits(self._queue_ids, wanted)
        with self.doc.transaction():
            for index in deleted:
                del self.queue[index]
            for index in inserted:
                item = planned[index]
                self.queue.insert(
                    index, Map({"id": item.id, "seq": item.seq, "author": item.author})
                )
        self._queue_ids = wanted

    @_mutator
    def append_reply_text(self, reply_id: str, text: str) -> None:
        reply = self._entry(reply_id)
        with self.doc.transaction():  # one for the reads and the insert: once per token
            status = reply["status"]
            if status != ReplyStatus.STREAMING.value:
                check_reply_transition(ReplyStatus(status), ReplyStatus.STREAMING)
            content: Text = reply["content"]
            content.insert(len(content), text)

    @_mutator
    def finish_prompts(self, prompt_ids: Sequence[str], ending: Ending | None = None) -> None:
        """Move prompts to their final status: ``done`` without an ``ending``, else the one
        its code names (``session.reasons.OUTCOMES``); their reply follows.

        Prompts still listed in ``queue`` must be taken out of it by the caller
        (``set_queue``).
        """
        status = PromptStatus.DONE if ending is None else ending.status
        new = ReplyStatus.DONE if ending is None else ending.reply_status
        prompts = self._distinct(prompt_ids)
        replies = {
            str(prompt["reply_id"]): self._entry(str(prompt["reply_id"]))
            for prompt in prompts
            if prompt.get("reply_id") is not None
        }
        for prompt in prompts:  # check everything before changing anything
            check_prompt_transition(PromptStatus(prompt["status"]), status)
        for reply in replies.values():
            check_reply_transition(ReplyStatus(reply["status"]), new)
        with self.doc.transaction():
            for entry in prompts:
                entry["status"] = status.value
            for entry in replies.values():
                entry["status"] = new.value
            if ending is not None:
                for entry in [*prompts, *replies.values()]:
                    entry["reason"] = ending.reason
                    entry["reason_code"] = ending.code.value

    def _append(self, **fields: Any) -> None:
        entry = entry_map(**fields)
        self.transcript.append(entry)
        self._order.append(fields["id"])
        self._entries[fields["id"]] = entry  # integrated by the append: no walk to its index

    def _distinct(self, entry_ids: Sequence[str]) -> list[Map[Any]]:
        if len(set(entry_ids)) != len(entry_ids):
            raise InvalidInput("an entry is named twice")
        return [self._entry(entry_id) for entry_id in entry_ids]

    def _entry(self, entry_id: str) -> Map[Any]:
        """The live entry, for a mutator: its cached copy is dropped."""
        try:
            entry = self._entries[entry_id]
        except KeyError:
            raise NotFound(f"no transcript entry {entry_id!r}") from None
        if self._copies.pop(entry_id, None) is not None:
            self._listed_valid = min(self._listed_valid, self._position(entry_id))
        return entry

    def _position(self, entry_id: str) -> int:
        """Where the entry is in the story, looked for from the end: the entries that
        change (a prompt that runs, its reply) are the newest ones but a few."""
        order = self._order
        for index in range(len(order) - 1, -1, -1):
            if order[index] == entry_id:
                return index
        raise NotFound(f"no transcript entry {entry_id!r}")

    def _copy(self, entry_id: str) -> Entry:
        self._current()
        copy = self._copies.get(entry_id)
        if copy is None:
            try:
                copy = self._copies[entry_id] = read_entry(self._entries[entry_id])
            except KeyError:
                raise NotFound(f"no transcript entry {entry_id!r}") from None
        return copy

    # -- reading ---------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """A copy of every entry, in story order: each read from the document once after
        it changed, so a call costs the entries changed since the last, and a list copy."""
        self._current()
        listed, valid = self._listed, self._listed_valid
        del listed[valid:]
        listed.extend(self._copy(entry_id) for entry_id in self._order[valid:])
        self._listed_valid = len(listed)
        return list(listed)

    def entry(self, entry_id: str) -> Entry:
        return self._copy(entry_id)

    def has_entry(self, entry_id: str) -> bool:
        self._current()
        return entry_id in self._entries

    def queued(self) -> list[QueuedItem]:
        return [
            QueuedItem(id=str(item["id"]), seq=int(item["seq"]), author=str(item["author"]))
            for item in self.queue
        ]

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries())
