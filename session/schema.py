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
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from pycrdt import Array, Doc, Map, Text, TransactionEvent

from parley.session.attribution import Fact
from parley.session.entries import (
    MESSAGE_STATUS,
    Entry,
    EntryKind,
    Listing,
    ListingLog,
    entry_fields,
    entry_from_fields,
    entry_map,
    read_entry,
)
from parley.session.errors import InvalidInput, NotFound
from parley.session.lifecycle import (
    REPLY_TRANSITIONS,
    TOOL_STEP_TRANSITIONS,
    PromptStatus,
    ReplyStatus,
    ToolStepStatus,
    check_prompt_transition,
    check_reply_transition,
    check_tool_step_transition,
    is_terminal,
)
from parley.session.observers import observe_weakly
from parley.session.queue_root import queue_edits
from parley.session.reasons import Ending
from parley.session.yitems import (
    ID,
    TEXT_BLOCK_UNITS,
    UpdateWriter,
    WrittenMap,
    append_in_blocks,
    utf16_length,
)
from parley.session.yprotocol import decode_state_vector

SCHEMA_VERSION = 1

ENCODE_FROM = 1000
"""Transcript length from which new entries are written as encoded updates (``_Written``):
pycrdt's insert walks the array, about 20 to 150 ns an entry as the machine is loaded; an
encoded insert costs about 30 us whatever the length, and each later change to the entry
about 10 us more than through pycrdt's handle."""


_UNCHANGING = frozenset({EntryKind.MESSAGE.value})
_FINAL = {
    EntryKind.PROMPT.value: frozenset(s.value for s in PromptStatus if is_terminal(s)),
    EntryKind.REPLY.value: frozenset(s.value for s in ReplyStatus if not REPLY_TRANSITIONS[s]),
    EntryKind.TOOL.value: frozenset(
        s.value for s in ToolStepStatus if not TOOL_STEP_TRANSITIONS[s]
    ),
}


def _changes_no_more(fields: dict[str, Any]) -> bool:
    """Whether no mutator changes the entry of ``fields`` again: a message, a tool step,
    a prompt or reply in its final status (a tool step stored ``running`` ends later)."""
    kind = fields.get("kind")
    return kind in _UNCHANGING or fields.get("status") in _FINAL.get(str(kind), ())


def _final_copy(fields: dict[str, Any]) -> Entry | None:
    """The copy of an entry read from its ``fields`` that no mutator changes again (a
    message, a tool step, a prompt or reply in its final status); None for one that may
    change, or fields that do not read as an entry (its handle is kept: a read fails as
    it did)."""
    if not _changes_no_more(fields):
        return None
    try:
        return entry_from_fields(fields)
    except (KeyError, TypeError, ValueError):
        return None


"""Kinds of entry no mutator changes once written."""


@dataclass(slots=True)
class _Written:
    """An entry this document wrote as encoded updates: the ids that name its items, and
    its fields as plain values (its text in pieces, joined when read)."""

    ids: WrittenMap
    fields: dict[str, Any]
    text: list[str]

    def read(self) -> Entry:
        if len(self.text) > 1:
            self.text[:] = ["".join(self.text)]
        return entry_from_fields({**self.fields, "content": self.text[0] if self.text else ""})


LISTED_PER_STEP = 1024
"""Entries ``SessionDocument.listing`` copies in one step: under a microsecond each."""


class TranscriptIndex:
    """A transcript read entry by entry, in story order, for ``SessionDocument``: the ids
    in order, the copies of the entries no mutator changes again, and a handle on each
    that may change (the caller's to give: ``add``)."""

    __slots__ = ("entries", "order", "settled")

    def __init__(self) -> None:
        self.order: list[str] = []
        self.entries: dict[str, Map[Any]] = {}
        self.settled: dict[str, Entry] = {}

    def add(self, fields: dict[str, Any]) -> str | None:
        """Take the next entry, read as plain ``fields``: its id if it may still change
        (or does not read as an entry), whose handle the caller puts in ``entries``."""
        entry_id = str(fields["id"])
        self.order.append(entry_id)
        copy = _final_copy(fields)
        if copy is None:
            return entry_id
        self.settled[entry_id] = copy
        return None


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

    def __init__(
        self,
        doc: Doc[Any],
        *,
        encode_from: int | None = None,
        index: TranscriptIndex | None = None,
        text_block_units: int = TEXT_BLOCK_UNITS,
    ) -> None:
        """``index``: the transcript of ``doc`` already read (``session.loading``); None:
        read here, at once. ``text_block_units``: how long a reply's text grows in one
        block (``yitems.TEXT_BLOCK_UNITS``)."""
        self.doc = doc
        self.encode_from = ENCODE_FROM if encode_from is None else encode_from
        self.text_block_units = text_block_units
        self.transcript: Array[Any] = doc.get("transcript", type=Array)
        self.queue: Array[Any] = doc.get("queue", type=Array)
        self.meta: Map[Any] = doc.get("meta", type=Map)
        self.pins: Array[Any] = doc.get("pins", type=Array)
        self.facts: Map[Any] = doc.get("facts", type=Map)
        self.fact_authors: Map[Any] = doc.get("fact_authors", type=Map)
        # Mirrors of the document kept in step by the mutators, so that reading the story
        # costs dictionary look-ups, not a walk through the CRDT, on every run.
        self._order: list[str] = []
        # Each entry is live in pycrdt (``_entries``: a handle on its map), or one this
        # document wrote itself, encoded: while it may change (``_written``: its ids and
        # fields), then as its copy alone (``_settled``: a message, a tool step, a prompt
        # or reply in its final status). An entry's map item id is in ``_items`` when
        # known, for its neighbours' inserts.
        self._entries: dict[str, Map[Any]] = {}
        self._written: dict[str, _Written] = {}
        self._settled: dict[str, Entry] = {}
        self._items: dict[str, ID] = {}
        self._writer: UpdateWriter | None = None
        # The text of each reply streamed through a pycrdt handle, from its first text to
        # its end (only ``finish_prompts`` ends a reply: its status is not read again),
        # with the units its last block holds.
        self._streaming: dict[str, tuple[Text, int]] = {}
        self._state_after: tuple[bytes, int] = (b"", 0)  # the state the last update left
        self._copies: dict[str, Entry] = {}
        # The copies in story order, kept for ``entries``: the first ``_listed_valid`` are
        # current. A mutator takes the entries it changes through ``_entry``, which moves
        # that mark back (an insert too: it takes the entry it goes next to).
        self._listed: list[Entry] = []
        self._listed_valid = 0
        # Each listing ``entries`` returns is numbered, with what it shares with the one
        # before: a reader of two listings (the context's history) knows where they part.
        self._listings = ListingLog()
        self._listing = 0
        self._queue_ids: list[str] = []
        # True while a mutator runs; any other change marks the mirrors stale, and they are
        # rebuilt on their next use (once per read, however many updates arrived).
        self._own = False
        self._stale = False
        # Counts the transactions that changed the document, its own and others': what was
        # read of it at one revision is still true while the revision stays.
        self.revision = 0
        observe_weakly(doc, self._changed)
        if index is None:
            self._reindex()
        else:
            self._use(index)

    def _changed(self, event: TransactionEvent) -> None:
        self.revision += 1
        if not self._own:
            self._stale = True

    def _current(self) -> None:
        if self._stale:
            self._reindex()

    def _reindex(self) -> None:
        # The whole transcript read at once, as JSON: yrs finds a map by its index with a
        # walk from the start, so taking every map's handle cost time quadratic in the
        # length (2,000 entries: 171 ms; 8,000: 1.3 s, a load's stall of the loop). Only
        # the few entries that may change (a prompt not yet final, its reply) are walked to.
        index = TranscriptIndex()
        for position, fields in enumerate(json.loads(str(self.transcript))):
            if (entry_id := index.add(fields)) is not None:
                index.entries[entry_id] = self.transcript[position]
        self._use(index)

    def _use(self, index: TranscriptIndex) -> None:
        """Make ``index`` the mirrors of the transcript; the others start empty."""
        self._stale = False
        self._order = index.order
        self._entries = index.entries
        self._settled = index.settled
        self._written = {}
        self._items = {}
        self._writer = None
        self._streaming = {}
        self._copies = {}
        self._listed_valid = 0
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
        if not self.has_entry(entry_id):
            raise NotFound(f"no transcript entry {entry_id!r}")
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
        """Every fact, sorted by key: a Y.Map iterates in an order of its process's own,
        which differs between nodes and restarts (review RI-2)."""
        return {str(k): str(v) for k, v in sorted(self.facts.items())}

    def facts_with_authors(self) -> dict[str, Fact]:
        """Every fact with who set it (None for a fact set before authors were kept)."""
        authors = {str(k): str(v) for k, v in self.fact_authors.items()}
        return {key: Fact(value, authors.get(key)) for key, value in self.fact_map().items()}

    @_mutator
    def add_prompt(self, *, id: str, seq: int, author: str, text: str, created_at: int) -> None:
        """Append a queued prompt; the caller lists it in ``queue`` with ``set_queue``."""
        with self._transaction():
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
        with self._transaction():
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
        self._distinct(prompt_ids)
        if not prompt_ids:
            raise ValueError("a reply answers at least one prompt")
        for prompt_id in prompt_ids:  # check everything before changing anything
            status = self._get(prompt_id, "status")
            check_prompt_transition(PromptStatus(status), PromptStatus.RUNNING)
        with self._transaction():
            for prompt_id in prompt_ids:
                self._set(
                    prompt_id,
                    status=PromptStatus.RUNNING.value,
                    reply_id=reply_id,
                    started_at=created_at,
                )
            last = max(self._position(p) for p in prompt_ids)
            self._insert(
                last + 1,
                entry_fields(
                    id=reply_id,
                    seq=self._copy(self._order[last]).seq,
                    kind=EntryKind.REPLY,
                    author=author,
                    role="assistant",
                    status=ReplyStatus.STREAMING.value,
                    text="",
                    created_at=created_at,
                    reply_to=self._order[last],
                    answers=list(prompt_ids),
                ),
            )

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
        """Insert one tool step of a running reply directly before the reply (``running``:
        a call on its way, which ``end_tool_step`` ends)."""
        ToolStepStatus(status)  # one of the table's
        self._entry(reply_id)
        fields = entry_fields(
            id=id,
            seq=self._copy(reply_id).seq,
            kind=EntryKind.TOOL,
            author=author,
            role="tool",
            status=status,
            text=text,
            created_at=created_at,
            reply_to=reply_id,
            tool=tool,
        )
        with self._transaction():
            self._insert(self._position(reply_id), fields)

    @_mutator
    def end_tool_step(self, id: str, *, status: str, text: str) -> None:
        """A tool step stored ``running`` reaches ``status``; its shown ``text`` follows."""
        if self._get(id, "kind") != EntryKind.TOOL.value:
            raise InvalidInput(f"entry {id!r} is not a tool step")
        check_tool_step_transition(ToolStepStatus(self._get(id, "status")), ToolStepStatus(status))
        entry = self._entry(id)
        if entry is None:  # written encoded: its text is replaced through a handle
            self._written.pop(id, None)
            self._settled.pop(id, None)
            self._flush()
            entry = self.transcript[self._position(id)]
            self._entries[id] = entry
        with self._transaction():
            entry["status"] = status
            content: Text = entry["content"]
            del content[:]
            content.insert(0, text)

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
        if reply is None:  # written encoded
            status = self._get(reply_id, "status")
            if status != ReplyStatus.STREAMING.value:
                check_reply_transition(ReplyStatus(status), ReplyStatus.STREAMING)
            written = self._written[reply_id]
            with self._transaction():
                self._encoding().append_text(written.ids, text, self.text_block_units)
            if text:
                written.text.append(text)
            return
        with self.doc.transaction():  # one for the reads and the insert: once per token
            streaming = self._streaming.get(reply_id)
            if streaming is None:  # its first text: check it streams, keep its text's handle
                status = reply["status"]
                if status != ReplyStatus.STREAMING.value:
                    check_reply_transition(ReplyStatus(status), ReplyStatus.STREAMING)
                text_so_far: Text = reply["content"]
                streaming = (text_so_far, utf16_length(str(text_so_far)))
            content, block = streaming
            block = append_in_blocks(content, text, block, self.text_block_units)
            self._streaming[reply_id] = (content, block)

    @_mutator
    def finish_prompts(self, prompt_ids: Sequence[str], ending: Ending | None = None) -> None:
        """Move prompts to their final status: ``done`` without an ``ending``, else the one
        its code names (``session.reasons.OUTCOMES``); their reply follows.

        Prompts still listed in ``queue`` must be taken out of it by the caller
        (``set_queue``).
        """
        status = PromptStatus.DONE if ending is None else ending.status
        new = ReplyStatus.DONE if ending is None else ending.reply_status
        self._distinct(prompt_ids)
        replies: list[str] = []
        for prompt_id in prompt_ids:
            reply_id = self._get(prompt_id, "reply_id")
            if reply_id is not None and str(reply_id) not in replies:
                self._entry(str(reply_id))
                replies.append(str(reply_id))
        for prompt_id in prompt_ids:  # check everything before changing anything
            check_prompt_transition(PromptStatus(self._get(prompt_id, "status")), status)
        for reply_id in replies:
            check_reply_transition(ReplyStatus(self._get(reply_id, "status")), new)
        with self._transaction():
            for prompt_id in prompt_ids:
                self._set(prompt_id, status=status.value)
            for reply_id in replies:
                self._set(reply_id, status=new.value)
            if ending is not None:
                told: dict[str, Any] = {"reason": ending.reason, "reason_code": ending.code.value}
                if ending.retry_at is not None:
                    # Only where a time is known: an entry's map gains a key a stock
                    # client ignores, as ``source`` and ``tool`` were added.
                    told["retry_at"] = ending.retry_at
                for entry_id in [*prompt_ids, *replies]:
                    self._set(entry_id, **told)
        for reply_id in replies:
            self._streaming.pop(reply_id, None)
        if is_terminal(status):
            for entry_id in [*prompt_ids, *replies]:
                self._settle(entry_id)

    def _append(self, **fields: Any) -> None:
        self._insert(len(self._order), entry_fields(**fields))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One document transaction, with what was encoded in it applied at its end. A
        mutator that fails part way may leave ids it did not apply: the mirrors are rebuilt
        from the document before their next use."""
        try:
            with self.doc.transaction():
                yield
                self._flush()
        except BaseException:
            self._writer = None
            self._stale = True
            raise

    def _encoding(self) -> UpdateWriter:
        """The update this transaction's encoded changes go into, begun at the document's
        next clock."""
        if self._writer is None:
            self._writer = UpdateWriter(self.doc.client_id, self._next_clock())
        return self._writer

    def _next_clock(self) -> int:
        """This client's next clock: read from the state vector, unless it is the one the
        last encoded update left (nothing written since)."""
        state = self.doc.get_state()
        if state == self._state_after[0]:
            return self._state_after[1]
        return decode_state_vector(state).get(self.doc.client_id, 0)

    def _flush(self) -> None:
        """Apply the encoded changes so far: before pycrdt writes (it takes the next
        clocks) and at the end of the transaction."""
        writer, self._writer = self._writer, None
        if writer is None or writer.empty:
            return
        self.doc.apply_update(writer.update())
        state = self.doc.get_state()
        clock = decode_state_vector(state).get(writer.client, 0)
        if clock != writer.clock:
            # It named an id the document does not hold: yrs keeps the rest pending (and
            # drops it once this client's clock passes it); the mirrors are rebuilt.
            raise RuntimeError(f"an encoded change was not integrated ({clock} != {writer.clock})")
        self._state_after = (state, clock)

    def _insert(self, index: int, fields: dict[str, Any]) -> None:
        """Insert an entry at ``index``: encoded, placed by its neighbours' ids, once the
        transcript is long and those ids are known; else through pycrdt, noting the new
        map's id once the transcript is that long (pycrdt gives a new map the next clock,
        then its keys the ones after; shorter, the state vector is not read)."""
        order, items = self._order, self._items
        entry_id = str(fields["id"])
        left = order[index - 1] if index > 0 else None
        right = order[index] if index < len(order) else None
        if (
            len(order) >= self.encode_from
            and (left is None or left in items)
            and (right is None or right in items)
        ):
            written = self._encoding().insert_map(
                fields,
                origin=None if left is None else items[left],
                right_origin=None if right is None else items[right],
                root="transcript",
            )
            text = str(fields["content"])
            plain = {key: value for key, value in fields.items() if key != "content"}
            self._written[entry_id] = _Written(written, plain, [text] if text else [])
            items[entry_id] = written.item
            if _changes_no_more(fields):
                self._settle(entry_id)
        else:
            self._flush()
            if len(order) + 1 >= self.encode_from:  # a neighbour of inserts to be encoded
                items[entry_id] = (self.doc.client_id, self._next_clock())
            entry = entry_map(fields)
            self.transcript.insert(index, entry)
            self._entries[entry_id] = entry  # integrated now: no walk to ``index`` again
        order.insert(index, entry_id)
        self._listed_valid = min(self._listed_valid, index)

    def _settle(self, entry_id: str) -> None:
        """Keep only the copy of an encoded entry that will not change again."""
        written = self._written.pop(entry_id, None)
        if written is not None:
            self._settled[entry_id] = written.read()

    def _handle(self, entry_id: str) -> Map[Any]:
        """A pycrdt handle on a settled entry, found by a walk to it: for a change the
        schema does not make today (statuses that end are final)."""
        self._flush()
        entry: Map[Any] = self.transcript[self._position(entry_id)]
        del self._settled[entry_id]
        self._entries[entry_id] = entry
        return entry

    def _get(self, entry_id: str, key: str) -> Any:
        """One field of an entry, for a mutator's checks."""
        written = self._written.get(entry_id)
        if written is not None:
            return written.fields.get(key)
        settled = self._settled.get(entry_id)
        if settled is not None:
            return getattr(settled, key, None)
        entry = self._entry(entry_id)
        assert entry is not None
        return entry.get(key)

    def _set(self, entry_id: str, **fields: Any) -> None:
        """Set fields of an entry, in the mutator's transaction."""
        entry = self._entry(entry_id)
        if entry is None and entry_id in self._settled:
            entry = self._handle(entry_id)
        if entry is None:  # written encoded
            written = self._written[entry_id]
            writer = self._encoding()
            for key, value in fields.items():
                writer.set_key(written.ids, key, value)
                written.fields[key] = value
            return
        self._flush()
        for key, value in fields.items():
            entry[key] = value

    def _distinct(self, entry_ids: Sequence[str]) -> None:
        """Check that the entries exist and are named once each; their copies are dropped."""
        if len(set(entry_ids)) != len(entry_ids):
            raise InvalidInput("an entry is named twice")
        for entry_id in entry_ids:
            self._entry(entry_id)

    def _entry(self, entry_id: str) -> Map[Any] | None:
        """The live entry, for a mutator (``None``: one written encoded); its cached copy
        is dropped."""
        entry = self._entries.get(entry_id)
        if entry is None and entry_id not in self._written and entry_id not in self._settled:
            raise NotFound(f"no transcript entry {entry_id!r}")
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
            written = self._written.get(entry_id)
            if written is not None:
                copy = written.read()
            elif entry_id in self._settled:
                copy = self._settled[entry_id]
            else:
                try:
                    copy = read_entry(self._entries[entry_id])
                except KeyError:
                    raise NotFound(f"no transcript entry {entry_id!r}") from None
            self._copies[entry_id] = copy
        return copy

    # -- reading ---------------------------------------------------------------------------

    def entries(self) -> Listing:
        """A copy of every entry, in story order: each read from the document once after
        it changed, so a call costs the entries changed since the last, and a list copy.
        It is numbered, so a reader of two knows where they part (``Listing``)."""
        self._list(None)
        return Listing(self._listed, self._listings, self._listing)

    def listing(self, steps: int = LISTED_PER_STEP) -> Iterator[None]:
        """Copy what ``entries`` lists ``steps`` entries at a time, yielding between the
        steps: a caller that lets others run between them spreads the first listing of a
        long transcript (60,000 entries copied in one call held the loop 45 ms after a
        load). What changes between the steps is listed as ``entries`` lists it."""
        while self._list(max(steps, 1)):
            yield

    def _list(self, most: int | None) -> int:
        """Copy into the listing the entries it lacks, ``most`` of them at most (None:
        all); how many it lacks then."""
        self._current()
        listed, valid, order = self._listed, self._listed_valid, self._order
        if valid < len(listed) or len(listed) < len(order):
            end = len(order) if most is None else min(len(order), valid + most)
            del listed[valid:]
            listed.extend(self._copy(entry_id) for entry_id in order[valid:end])
            self._listed_valid = len(listed)
            self._listing = self._listings.listed(valid)
        return len(order) - len(listed)

    def entry(self, entry_id: str) -> Entry:
        return self._copy(entry_id)

    def tool_steps(self, reply_id: str) -> list[Entry]:
        """The tool steps of reply ``reply_id``, in order (they sit directly before it)."""
        self._current()
        if not self.has_entry(reply_id):
            return []
        steps: list[Entry] = []
        index = self._position(reply_id) - 1
        while index >= 0:
            step = self._copy(self._order[index])
            if step.kind is not EntryKind.TOOL or step.reply_to != reply_id:
                break
            steps.append(step)
            index -= 1
        return steps[::-1]

    def has_entry(self, entry_id: str) -> bool:
        self._current()
        return entry_id in self._entries or entry_id in self._written or entry_id in self._settled

    def queued(self) -> list[QueuedItem]:
        return [
            QueuedItem(id=str(item["id"]), seq=int(item["seq"]), author=str(item["author"]))
            for item in self.queue
        ]

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries())
