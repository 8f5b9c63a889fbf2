"""The document of one private side-thread: what its owner's Yjs clients sync.

Roots (written by the server only; clients read):

``thread`` — Y.Map: ``id``, ``owner``, ``title``, ``anchor_seq``, ``status`` (``open`` |
    ``closed``), ``created_at`` (milliseconds since the epoch), ``schema_version``.
``turns`` — Y.Array of Y.Map, the thread in order. Each turn has ``id``, ``kind``
    (``prompt`` | ``reply`` | ``tool``), ``author``, ``role`` (``user`` | ``assistant`` |
    ``tool``), ``status``, ``content`` (Y.Text: a reply's grows as the model writes it),
    ``created_at``, ``summarise`` and ``restricted`` (it drew on what not every member may
    read); ``reason_code`` once it ended unanswered, and ``retry_at`` beside it when a
    quota failed it (when it may be sent again, ms since the epoch). A reply being written
    has status ``streaming``; its run's tool steps sit before it, as they are stored.

The rows (``SideThread``, ``ThreadTurn``) are the truth: the document is built from them
(``thread_document``) and brought to each stored change (``show_thread``, ``show_turn``);
only a reply's streamed text runs ahead of them. The server stores each of its updates
(``server.runtime.thread_docs``), so the document read back after a restart is the same
one; a client holding a document this one does not cover holds another (``covers``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pycrdt import Array, ArrayEvent, Doc, Map, Text

from parley.session.core.steps import ShownRun
from parley.session.core.thread_state import SideThread, ThreadTurn
from parley.session.lifecycle import ReplyStatus
from parley.session.yitems import TEXT_BLOCK_UNITS, append_in_blocks, utf16_length
from parley.session.yprotocol import decode_state_vector, lists_more_clients

SCHEMA_VERSION = 1
ROLES = {"prompt": "user", "reply": "assistant", "tool": "tool"}


class ThreadDocument:
    """Typed access to a side-thread's pycrdt document; each mutator is one transaction
    (one update for its clients)."""

    def __init__(self) -> None:
        """An empty document (``read``: one stored before)."""
        self.doc: Doc[Any] = Doc()
        self.thread: Map[Any] = self.doc.get("thread", type=Map)
        self.turns: Array[Any] = self.doc.get("turns", type=Array)
        # The turns' ids in order, and each turn by id, kept beside ``turns``: a turn read
        # by its index costs a walk from the first (yrs), so the document is never read
        # that way. Walking it turn by turn made opening a thread of 10,000 turns take a
        # minute; a streamed piece of text costs a look-up here.
        self._order: list[str] = []
        self._by_id: dict[str, Map[Any]] = {}
        # The units the last block of each streaming reply's text holds
        # (``yitems.TEXT_BLOCK_UNITS``), from its first streamed piece until it is shown.
        self._blocks: dict[str, int] = {}

    @classmethod
    def read(cls, snapshot: bytes | None, updates: Iterable[bytes] = ()) -> ThreadDocument:
        """The document stored as ``snapshot`` (None: none) and the ``updates`` after it."""
        document = cls()
        if snapshot is not None:
            document.apply(snapshot)
        for update in updates:
            document.apply(update)
        return document

    def apply(self, update: bytes) -> None:
        """Apply an update the server stored (read back, or a follower's replication):
        the turns it adds or removes are taken from its change to ``turns``, in one pass
        over the update."""
        subscription = self.turns.observe(self._follow)
        try:
            self.doc.apply_update(update)
        finally:
            self.turns.unobserve(subscription)

    def _follow(self, event: ArrayEvent) -> None:
        """``turns`` changed by an applied update: ``_order`` and ``_by_id`` follow its
        delta (retain, delete, insert runs in order)."""
        changes: list[dict[str, Any]] = event.delta  # type: ignore[attr-defined]  # unannotated slot
        index = 0
        for change in changes:
            if "retain" in change:
                index += change["retain"]
            elif "delete" in change:
                end = index + change["delete"]
                for turn_id in self._order[index:end]:
                    self._by_id.pop(turn_id, None)
                del self._order[index:end]
            else:
                added: list[Map[Any]] = list(change["insert"])
                ids = [str(turn["id"]) for turn in added]
                self._order[index:index] = ids
                self._by_id.update(zip(ids, added, strict=True))
                index += len(added)

    # -- writing --------------------------------------------------------------------------

    def show_thread(self, thread: SideThread) -> None:
        """The thread's own fields as stored (only those that changed are written)."""
        fields = {
            "id": thread.id,
            "owner": thread.owner,
            "title": thread.title,
            "anchor_seq": thread.anchor_seq,
            "status": thread.status,
            "created_at": thread.created_at,
            "schema_version": SCHEMA_VERSION,
        }
        with self.doc.transaction():
            _set_changed(self.thread, fields)

    def show_turn(self, turn: ThreadTurn, before: str | None = None) -> None:
        """A stored turn: added (before turn ``before`` if there is one, else last), or the
        turn of that id brought to it (its status, its text)."""
        with self.doc.transaction():
            shown = self._by_id.get(turn.id)
            if shown is None:
                self._insert(turn.id, _new_turn(turn), before)
                return
            _set_changed(shown, _fields(turn))
            _show_text(shown["content"], turn.text)
            self._blocks.pop(turn.id, None)

    def show_turns(self, turns: Sequence[ThreadTurn]) -> None:
        """``show_turn`` of each of ``turns`` in order, in one transaction, those not shown
        yet added last: added one after another, each insert walked the turns before it
        (yrs), so a document built from the rows of a long thread took time in the square
        of its turns (4,000 turns: 0.5 s; 20,000: 39 s, in one block of the loop)."""
        added: list[tuple[str, Map[Any]]] = []
        with self.doc.transaction():
            for turn in turns:
                shown = self._by_id.get(turn.id)
                if shown is None:
                    added.append((turn.id, _new_turn(turn)))
                    continue
                _set_changed(shown, _fields(turn))
                _show_text(shown["content"], turn.text)
                self._blocks.pop(turn.id, None)
            # The newest first, each at the same place: yrs walks to an index from the
            # first turn, and a document built from the rows has none before them.
            end = len(self._order)
            for _, new in reversed(added):
                self.turns.insert(end, new)  # ``new`` is the inserted turn from now on
            self._order += [turn_id for turn_id, _ in added]
            self._by_id.update(added)

    def start_reply(self, reply_id: str, author: str, created_at: int) -> None:
        """A reply the model is about to write (``streaming``, no text yet)."""
        if reply_id in self._by_id:
            return
        fields: dict[str, Any] = {
            "id": reply_id,
            "kind": "reply",
            "author": author,
            "role": "assistant",
            "status": ReplyStatus.STREAMING.value,
            "created_at": created_at,
            "summarise": False,
            "restricted": False,
        }
        self._insert(reply_id, Map({**fields, "content": Text()}), None)

    def append_text(self, reply_id: str, text: str) -> None:
        """More of a reply's text, as the model writes it."""
        shown = self._by_id.get(reply_id)
        if shown is not None:
            content: Text = shown["content"]
            block = self._blocks.get(reply_id)
            if block is None:
                block = utf16_length(str(content))
            self._blocks[reply_id] = append_in_blocks(content, text, block, TEXT_BLOCK_UNITS)

    def drop_unstored(self, stored: set[str]) -> None:
        """Remove the turns whose ids are not ``stored``: a reply cut off before it was
        stored (a restart mid-run), so the document shows what the rows hold."""
        for index in reversed(range(len(self._order))):
            turn_id = self._order[index]
            if turn_id not in stored:
                del self.turns[index]
                del self._order[index]
                self._by_id.pop(turn_id, None)
                self._blocks.pop(turn_id, None)

    # -- reading ---------------------------------------------------------------------------

    def turn_ids(self) -> list[str]:
        return list(self._order)

    def shown_run(self, prompt_id: str, reply_id: str) -> ShownRun | None:
        """What this document shows of the run answering ``prompt_id`` with ``reply_id``:
        its reply's text and the tool steps between them (None: it shows no such reply)."""
        reply = self._by_id.get(reply_id)
        if reply is None or prompt_id not in self._by_id:
            return None
        between = self._order[self._order.index(prompt_id) + 1 : self._order.index(reply_id)]
        steps = [self._by_id[turn_id] for turn_id in between]
        return ShownRun(
            str(reply["content"]),
            tuple((s["id"], s["author"], s["status"]) for s in steps if s["kind"] == "tool"),
        )

    def covers(self, state_vector: bytes) -> bool:
        """True when a client's state (its sync step 1) is part of this document: only the
        server writes it, so a client holding anything else holds another document (one
        built before a restart) and would merge the two."""
        ours = decode_state_vector(self.doc.get_state())
        if lists_more_clients(state_vector, len(ours)):  # holds a client ours lacks
            return False
        theirs = decode_state_vector(state_vector)
        return all(clock <= ours.get(client, 0) for client, clock in theirs.items())

    def _insert(self, turn_id: str, turn: Map[Any], before: str | None) -> None:
        index = len(self._order)
        if before is not None and before in self._by_id:
            index = self._order.index(before)
        self.turns.insert(index, turn)  # ``turn`` is the inserted turn from now on
        self._order.insert(index, turn_id)
        self._by_id[turn_id] = turn


def _fields(turn: ThreadTurn) -> dict[str, Any]:
    """A stored turn's fields as the document shows them, its text aside."""
    fields: dict[str, Any] = {
        "id": turn.id,
        "kind": turn.kind,
        "author": turn.author,
        "role": ROLES.get(turn.kind, turn.kind),
        "status": turn.status,
        "created_at": turn.created_at,
        "summarise": turn.summarise,
        "restricted": bool(turn.restriction),
    }
    if turn.reason_code is not None:
        fields["reason_code"] = turn.reason_code
    if turn.retry_at is not None:  # only where a time is known, as on a session entry
        fields["retry_at"] = turn.retry_at
    return fields


def _new_turn(turn: ThreadTurn) -> Map[Any]:
    return Map({**_fields(turn), "content": Text(turn.text)})


def _set_changed(target: Map[Any], fields: dict[str, Any]) -> None:
    for key, value in fields.items():
        if target.get(key) != value:
            target[key] = value


def _show_text(content: Text, text: str) -> None:
    """Bring streamed ``content`` to the stored ``text``: usually equal already; the rest
    appended when the stored text goes on from it; replaced otherwise."""
    shown = str(content)
    if shown == text:
        return
    if text.startswith(shown):  # at pycrdt's end: its length counts UTF-8 bytes
        content.insert(len(content), text[len(shown) :])
        return
    del content[:]
    content.insert(0, text)


def show_all(
    document: ThreadDocument, thread: SideThread, running: Sequence[ThreadTurn] = ()
) -> None:
    """Show ``thread`` as stored, then ``running``: the turns of a run in flight not
    stored yet (its tool steps, then its reply so far, ``streaming``)."""
    document.show_thread(thread)
    document.show_turns(thread.turns)
    for turn in running:  # a tool step goes before the reply, if that is shown already
        document.show_turn(turn, before=running[-1].id if turn is not running[-1] else None)


def thread_document(
    thread: SideThread,
    running: Sequence[ThreadTurn] = (),
) -> ThreadDocument:
    """A new document showing ``thread`` (``show_all``)."""
    document = ThreadDocument()
    show_all(document, thread, running)
    return document
