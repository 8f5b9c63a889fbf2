"""Folding repetition out of a history, one entry at a time, with an undo log.

``HistoryFold`` turns the visible entries of a transcript, in story order, into items,
one per entry, each at its own place under its own author: repetition is never merged,
moved or reworded. Merged at its latest occurrence, one member's words moved to wherever
they (or another member) repeated them: alice's "yes" to one question was sent after
mallory's "shall we drop the prod database?" as alice's and mallory's both; alice's
proposal moved after mallory's approval of it; an answered question moved away from its
reply. Merged by likeness (case, final stops, MinHash near-duplicates), one wording
replaced another that meant something else: another recovery code, May 8th for May 3rd,
"transfer 5000 EUR" for "500" in a run answering both (reviews, 2026-12-06). What is
repeated as written is given once, the later copies as short references:
- a member's text the same as written as one before (``dedup.as_written``: blanks at line
  ends aside), whoever wrote either, becomes a reference to the first posting (``[the same
  text alice wrote in message #12]``); a prompt is given in full, in its asker's words;
- a pasted block (``min_block_lines`` lines or more) seen before becomes a reference;
- an assistant reply or a tool result seen before becomes a reference;
a reference is made only when shorter than its text, and the item keeps its text in full
beside it (``in_full``), which a build sends instead when what it refers to is not in that
input.

Every step records how to undo itself, so when the next build's history differs from the
last one only near its end (a reply finished, a prompt was added, a pin changed), the fold
rolls back to where they part and folds only what follows: the cost of a build is the
size of what changed, not of the whole history.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from parley.session.attribution import (
    attribution_line,
    bare_or_quoted,
    escape_text,
    name,
    placed,
    server_request_line,
    tool_line,
)
from parley.session.dedup import as_written
from parley.session.entries import SERVER_REQUEST, Entry, EntryKind
from parley.session.history import outcome_line
from parley.session.shape import TextShape, shape_of
from parley.session.tokens import count_tokens, tokenizer_name


@dataclass(frozen=True, slots=True)
class FoldedItem:
    """One message of the folded history (one entry). Never changed once made.

    ``said_by`` names the author of each of ``entry_ids``; ``text`` is ready for the model
    (member text escaped, the server's references in it). ``refers_to`` are the entries
    its references stand for (the first posting of a text, a block, a reply or a tool
    result); ``in_full`` is the item with its own text in their place: a reference to an
    entry the model is not given would leave it nothing (review: the newest reply was
    "[the same reply as to message #1]" with #1 out of the window)."""

    entry_ids: tuple[str, ...]
    seqs: tuple[int, ...]
    role: str  # "user", "assistant" or "tool" (an earlier run's tool step)
    said_by: tuple[str, ...]
    text: str
    note: str  # what its references stand for, for the preview ("" when nothing)
    tokens: int  # of ``render(item)``: the item as history, nobody asking
    refers_to: tuple[str, ...] = ()
    in_full: FoldedItem | None = None  # set when ``refers_to`` is not empty
    at: str = ""  # where it is from, on its server line (``numbered``): "message #12"
    label: str = ""  # its number in the fold, unique there (``HistoryFold.labels``)
    # A member's text the same as written as one before, given as a reference to that
    # first posting: the first posting's entry id (a build may name a later copy instead,
    # ``HistoryFold.referring_to``, when the first is not in its input).
    same_text: str = ""
    # A request the server wrote for its members (``SERVER_REQUEST``), under its own line.
    by_server: bool = False

    @property
    def last_seq(self) -> int:
        return self.seqs[-1]

    def counted(self) -> FoldedItem:
        """This item with ``tokens`` counted again (of ``render``: nobody asking)."""
        return replace(self, tokens=rendered_tokens(self))

    def voices(self, asking: Collection[str] = ()) -> tuple[list[str], list[str]]:
        """(who wrote it, who asks it now): an author asks only through a prompt of theirs
        in ``asking`` (the entries a run answers)."""
        wrote: list[str] = []
        asks: list[str] = []
        for entry_id, author in zip(self.entry_ids, self.said_by, strict=True):
            (asks if entry_id in asking else wrote).append(author)
        return wrote, asks


def attribution(item: FoldedItem, asking: Collection[str] = ()) -> str:
    """The server's first line of a user item: every author with their own verb (and its
    number, when a reference names it: ``numbered``)."""
    voices = item.voices(asking)
    line = server_request_line(*voices) if item.by_server else attribution_line(*voices)
    return placed(line, item.at) if item.at else line


def numbered(item: FoldedItem) -> FoldedItem:
    """``item`` with its number on its server line (``[alice wrote, message #12]``), for
    an input where a reference names it: the history's messages carry no numbers, so a
    reference to "message #12" would otherwise name nothing the model can find (review:
    mallory's paste of alice's staging config, "the block alice posted in message #5",
    read as alice's production config, the fifth message given). A reply has no server
    line: a reference to one names the prompt it answers, which shares its number."""
    if item.role == "assistant" or item.at:
        return item
    at = f"message #{item.label or item.seqs[-1]}"
    if item.role == "tool":
        line, _, text = item.text.partition("\n")
        return replace(item, text=headed(placed(line, at), text), at=at).counted()
    return replace(item, at=at).counted()


def render(item: FoldedItem, asking: Collection[str] = ()) -> str:
    """The message text the model is given: a user item opens with its attribution line
    (who wrote it, and who of the run's issuers asks it now), then the escaped text."""
    if item.role != "user":
        return item.text
    return headed(attribution(item, asking), item.text)


def rendered_tokens(item: FoldedItem, asking: Collection[str] = ()) -> int:
    """``count_tokens(render(item, asking))``, with a user item's attribution line and its
    text counted apart, each memoised: a text repeated (folded under a new line) or asked
    now costs no encode again. cl100k_base splits text before it merges tokens, and a line
    ending with a bracket and the newline after it always end a piece, so the two counts
    add up, unless the text opens with a line break (the newline would join it)."""
    if item.role != "user":
        return count_tokens(item.text)
    line = attribution(item, asking)
    if item.text[:1] in "\r\n" or not line.endswith("]") or tokenizer_name() != "cl100k_base":
        return count_tokens(headed(line, item.text))
    return count_tokens(line + "\n") + count_tokens(item.text)


def headed(line: str, text: str) -> str:
    """A user item's message text under its attribution ``line``: ``render``'s form, for a
    caller that has the line already."""
    return f"{line}\n{text}"


def _noted(item: FoldedItem, entry: Entry) -> FoldedItem:
    """``item`` with the server's line on how ``entry`` (its latest) ended, after its text,
    when that was not as asked (``history.outcome_line``: a prompt with no full answer, a
    reply cut off); the same after its text in full."""
    line = outcome_line(entry)
    if line is None:
        return item
    full = None if item.in_full is None else _noted(item.in_full, entry)
    draft = replace(item, text=f"{item.text}\n{line}", in_full=full)
    return replace(draft, tokens=rendered_tokens(draft))


def _escaped(entry: Entry, shape: TextShape) -> str:
    return entry.content if shape.escaped is None else shape.escaped


def prepare(text: str, min_block_lines: int) -> None:
    """Find now what folding a member's ``text`` needs of it alone (its shape, the tokens
    of its escaped form), for the build that folds it to find kept: a message's cost is
    paid once, as it is posted, not by the next build for every message posted since
    (review: a prompt after 250 long messages stalled the loop 1.4 s)."""
    shape = shape_of(text, min_block_lines)
    count_tokens(text if shape.escaped is None else shape.escaped)


def prepare_entry(entry: Entry, min_block_lines: int) -> None:
    """``prepare`` for an entry of a history as the fold will read it: a member's text
    shaped and counted, a reply's escaped text counted (a tool step: nothing kept)."""
    if entry.kind is EntryKind.TOOL:
        return
    if entry.role == "assistant":
        count_tokens(escape_text(entry.content))
    else:
        prepare(entry.content, min_block_lines)


UNDONE_PER_STEP = 1024
"""Steps a roll back in steps undoes in one (``HistoryFold.rewind``): a few microseconds
each."""

StepKey = tuple[str, str, bool, str | None]
"""What a step folded: entry id, its text, whether it was pinned, the server's line on how
it ended (``outcome_line``: a prompt asked in the last build is folded again once it ended
unanswered, not once it was answered). Equal keys fold equally."""

K = TypeVar("K")
V = TypeVar("V")
_MISSING = object()
# A step's undo: a function, or ``None`` for "pop the last item". Never a method of the
# fold: one in its own journal puts the fold in a reference cycle, and an evicted fold (a
# side-thread's, 300,000 objects at 20,000 entries) then waits for a full collection,
# which the server's thresholds all but never run (review RN-4).
_Undo = Callable[[], None] | None


class HistoryFold:
    """The fold of a history prefix; ``sync`` brings it to a new history with few steps."""

    def __init__(self, min_block_lines: int) -> None:
        self.min_block_lines = min_block_lines
        self.items: list[FoldedItem] = []  # one per entry not pinned, in story order
        self.item_of: dict[str, int] = {}  # entry id -> index of its item
        self.keys: list[StepKey] = []
        self.step_of: dict[str, int] = {}  # entry id -> its step (its index in the history)
        # The indices of ``items`` changed since a reader last cleared it (``ContextBuilder``
        # keeps what it learnt of the others): a few per sync, however long the history.
        self.changed: set[int] = set()
        # How many times ``sync`` or ``rewind`` ran: a caller folding in steps sees another.
        self.syncs = 0
        self._undo: list[list[_Undo]] = []
        # The first posting of each text, by the digest of what must be the same as
        # written: a member's text, a block's lines (whoever posted either); a reply; a
        # tool's name and result.
        self._messages: dict[bytes, Entry] = {}
        self._blocks: dict[bytes, Entry] = {}
        self._replies: dict[str, Entry] = {}
        self._tool_results: dict[str, Entry] = {}
        # Entry id -> how many items refer to it: a build numbers those it gives.
        self.referred: dict[str, int] = {}
        # Entry id -> its number, unique in the fold: its ``seq``, or ``seq.n`` for the nth
        # entry of one ``seq`` (a reply and the tool steps of a run share their prompt's;
        # a side-thread's turns all share its anchor's: review, 2026-12-06).
        self.labels: dict[str, str] = {}
        self._seq_uses: dict[int, int] = {}

    def sync(self, history: Sequence[tuple[Entry, bool]], unchanged: int = 0) -> int:
        """Fold ``history`` (entries with their pinned flag); return the steps redone.

        ``unchanged``: the caller knows the first so many entries are those of the last
        sync (``VisibleHistory`` does), so they are not compared again."""
        self.syncs += 1
        common = self.synced(history, unchanged)
        self._undo_to(common)
        for entry, pinned in history[common:]:
            self._undo.append(self._step(entry, pinned))
            self.step_of[entry.id] = len(self.keys)
            self.keys.append((entry.id, entry.content, pinned, outcome_line(entry)))
        return len(history) - common

    def rewind(self, common: int, steps: int) -> int:
        """Undo the steps past the first ``common``, the newest first, at most ``steps`` of
        them; return how many are left past ``common``. A caller that lets
        others run between calls spreads the roll back of a change early in a long history
        (a restriction changed on its first entry: 20,000 steps undone in one call)."""
        end = max(common, len(self.keys) - steps)
        if len(self.keys) > end:
            self.syncs += 1
            self._undo_to(end)
        return len(self.keys) - common

    def _undo_to(self, end: int) -> None:
        while len(self.keys) > end:
            for undo in reversed(self._undo.pop()):
                if undo is None:
                    self._pop_item()
                else:
                    undo()
            self.step_of.pop(self.keys.pop()[0], None)

    def synced(self, history: Sequence[tuple[Entry, bool]], unchanged: int = 0) -> int:
        """How many leading entries of ``history`` the fold holds as they are (the first
        ``unchanged`` are known to be: ``sync``)."""
        common = min(unchanged, len(history), len(self.keys))
        limit = min(len(history), len(self.keys))
        while common < limit:
            entry, pinned = history[common]
            if (entry.id, entry.content, pinned, outcome_line(entry)) != self.keys[common]:
                break
            common += 1
        return common

    def showing(self, entry_id: str) -> int | None:
        """The index of the item that gives ``entry_id``'s text; None when it was not
        folded (pinned, or not in the history)."""
        return self.item_of.get(entry_id)

    # -- one step ----------------------------------------------------------------------------

    def _step(self, entry: Entry, pinned: bool) -> list[_Undo]:
        undo: list[_Undo] = []
        uses = self._seq_uses.get(entry.seq, 0) + 1
        self._set(self._seq_uses, entry.seq, uses, undo)
        self._set(
            self.labels, entry.id, str(entry.seq) if uses == 1 else f"{entry.seq}.{uses}", undo
        )
        if pinned:
            return undo  # shown with the pins, never in the history
        if entry.kind is EntryKind.TOOL:
            self._add_tool_result(entry, undo)
        elif entry.source == SERVER_REQUEST:
            self._add_server_request(entry, undo)
        elif entry.role == "assistant":
            self._add_reply(entry, undo)
        else:
            self._add_user(entry, undo)
        return undo

    def _add_reply(self, entry: Entry, undo: list[_Undo]) -> None:
        # The same reply as written, as for members' words: "the same reply" in other case
        # could be another code or name.
        text = escape_text(entry.content)
        first = self._first_of(self._replies, as_written(entry.content), entry, undo)
        prompt = None if first is None else self.labels.get(first.reply_to or "")
        if first is None or prompt is None:
            self._add_whole(entry, "assistant", text, undo)
        else:
            # A reply has no server line to show its number: it is named by the prompt it
            # answered, which must be given too.
            reference = f"[the same reply as to message #{prompt}]"
            note = f"identical to the reply to message #{prompt}"
            named = (first.id, first.reply_to or "")
            self._add_whole(entry, "assistant", text, undo, (reference, note, named))

    def _add_tool_result(self, entry: Entry, undo: list[_Undo]) -> None:
        """A tool step of an earlier run; the same result again becomes a reference."""
        # Named as a member is (bare when plain, else a JSON string): a tool the model
        # called but may not use is stored under the name it gave, which could hold a
        # line break and a forged attribution line.
        tool = bare_or_quoted(entry.tool or "tool")
        key = f"{tool}\n{as_written(entry.content)}"
        first = self._first_of(self._tool_results, key, entry, undo)
        text = headed(tool_line(entry.tool or "tool"), escape_text(entry.content))
        if first is None:
            self._add_whole(entry, "tool", text, undo)
        else:
            reference = f"[the same {tool} result as in message #{self.labels[first.id]}]"
            note = f"identical to the {tool} result in message #{self.labels[first.id]}"
            self._add_whole(entry, "tool", text, undo, (reference, note, (first.id,)))

    def _first_of(
        self, seen: dict[K, Entry], key: K, entry: Entry, undo: list[_Undo]
    ) -> Entry | None:
        """The entry that first had ``key``; None (and ``entry`` is now it) if none did."""
        first = seen.get(key)
        if first is None:
            self._set(seen, key, entry, undo)
        return first

    def _add_whole(
        self,
        entry: Entry,
        role: str,
        text: str,
        undo: list[_Undo],
        reference: tuple[str, str, tuple[str, ...]] | None = None,
    ) -> None:
        """An item for an entry of the model's (a reply, a tool result): its ``text``, or
        ``reference`` (its text, its note, the entries it names) with ``text`` kept in full
        beside it."""
        item = FoldedItem(
            (entry.id,), (entry.seq,), role, (entry.author,), text, "", count_tokens(text)
        )
        if reference is not None:
            line, note, named = reference
            tokens = count_tokens(line)
            if tokens < item.tokens:  # a reference longer than its text ("ok") saves nothing
                item = replace(
                    item, text=line, note=note, tokens=tokens, refers_to=named, in_full=item
                )
        self._append(_noted(item, entry), undo)

    def _add_server_request(self, entry: Entry, undo: list[_Undo]) -> None:
        """A request the server wrote, asked by its member: under the server's line, and
        never the first posting a member's text is referred to (they did not write it)."""
        ids, seqs, said_by = (entry.id,), (entry.seq,), (entry.author,)
        draft = FoldedItem(ids, seqs, "user", said_by, escape_text(entry.content), "", 0)
        self._append(_noted(replace(draft, by_server=True).counted(), entry), undo)

    def _add_user(self, entry: Entry, undo: list[_Undo]) -> None:
        shape = shape_of(entry.content, self.min_block_lines)
        first = self._first_of(self._messages, shape.written, entry, undo)
        item = self._with_seen_blocks(entry, shape, undo)
        if first is not None and entry.kind is not EntryKind.PROMPT:
            item = self._as_reference(item, first)  # a prompt is asked in its asker's words
        self._append(_noted(item, entry), undo)

    def _as_reference(self, item: FoldedItem, first: Entry) -> FoldedItem:
        """``item``, whose text was posted before (``first``), as a reference to that
        posting when it is shorter, the text in full beside it."""
        full = item.in_full or item
        at = self.labels[first.id]
        line = f"[the same text {name(first.author)} wrote in message #{at}]"
        note = f"the same as message #{at} by {name(first.author)}"
        short = self._item(item.entry_ids, item.seqs, item.said_by, line, note)
        if short.tokens >= item.tokens:
            return item
        return replace(short, refers_to=(first.id,), in_full=full, same_text=first.id)

    def referring_to(self, item: FoldedItem, copy: FoldedItem) -> FoldedItem:
        """``item`` (a whole text given as a reference to its first posting: ``same_text``)
        as a reference to ``copy``, an earlier copy of that text, when that is shorter than
        the text; else the text in full (review RZ-2: with the first posting out of an
        input, every later copy went in full, four copies of one log in a window)."""
        full = item.in_full or item
        author, at = copy.said_by[-1], copy.label or str(copy.seqs[-1])
        line = f"[the same text {name(author)} wrote in message #{at}]"
        note = f"the same as message #{at} by {name(author)}"
        _, newline, after = item.text.partition("\n")  # the server's lines after it, if any
        short = self._item(item.entry_ids, item.seqs, item.said_by, line + newline + after, note)
        if short.tokens >= full.tokens:
            return full
        return replace(
            short,
            refers_to=(copy.entry_ids[-1],),
            in_full=full,
            same_text=item.same_text,
            label=item.label,
        )

    @staticmethod
    def _item(
        entry_ids: tuple[str, ...],
        seqs: tuple[int, ...],
        said_by: tuple[str, ...],
        text: str,
        note: str,
    ) -> FoldedItem:
        draft = FoldedItem(entry_ids, seqs, "user", said_by, text, note, 0)
        return FoldedItem(entry_ids, seqs, "user", said_by, text, note, rendered_tokens(draft))

    def _with_seen_blocks(self, entry: Entry, shape: TextShape, undo: list[_Undo]) -> FoldedItem:
        """The item of a member's entry that is merged into none before it: its escaped
        text, with each block posted before replaced by a reference (a line of the
        server's, which the escaped lines around it cannot imitate) and the text in full
        kept beside it (``FoldedItem.in_full``)."""
        text = _escaped(entry, shape)
        item = self._item((entry.id,), (entry.seq,), (entry.author,), text, "")
        seen = [
            (start, end, first)
            for start, end, written in reversed(shape.blocks)
            if (first := self._first_of(self._blocks, written, entry, undo)) is not None
        ]
        if not seen:  # its text as it is: not cut into lines
            return item
        # Escaping adds a backslash at the start of a line and never a "\n", so this is
        # each line escaped alone.
        lines = text.split("\n")
        for start, end, first in seen:
            lines[start:end] = [
                f"[the same {end - start}-line block {name(first.author)} posted in message "
                f"#{self.labels[first.id]}]"
            ]
        short = self._item(
            item.entry_ids,
            item.seqs,
            item.said_by,
            "\n".join(lines),
            "repeated block replaced by a reference",
        )
        if short.tokens >= item.tokens:
            return item  # references as long as the blocks they stand for save nothing
        refers_to = tuple(dict.fromkeys(first.id for _, _, first in reversed(seen)))
        return replace(short, refers_to=refers_to, in_full=item)

    # -- mutations that know their inverse ---------------------------------------------------

    def _append(self, item: FoldedItem, undo: list[_Undo]) -> None:
        index = len(self.items)
        label = self.labels[item.entry_ids[-1]]
        full = None if item.in_full is None else replace(item.in_full, label=label)
        item = replace(item, label=label, in_full=full)
        self.items.append(item)
        self.changed.add(index)
        undo.append(None)  # self._pop_item
        for entry_id in item.entry_ids:
            self._set(self.item_of, entry_id, index, undo)
        for entry_id in item.refers_to:
            self._set(self.referred, entry_id, self.referred.get(entry_id, 0) + 1, undo)

    def _pop_item(self) -> None:
        self.items.pop()
        self.changed.add(len(self.items))

    @staticmethod
    def _set(mapping: dict[K, V], key: K, value: V, undo: list[_Undo]) -> None:
        """``mapping[key] = value``, undoably."""
        old = mapping.get(key, _MISSING)
        mapping[key] = value

        def restore() -> None:
            if old is _MISSING:
                mapping.pop(key, None)
            else:
                mapping[key] = old  # type: ignore[assignment]

        undo.append(restore)
