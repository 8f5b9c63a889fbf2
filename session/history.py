"""What a run sees of the transcript, judged once per entry and kept between builds.

A build's history is every message, answered prompt, finished reply and tool result the
run's issuers may read, up to its (last) prompt, then the prompts it answers
(``session.context``). Judging that afresh walked the whole transcript on every build;
``VisibleHistory`` keeps the judged prefix of one read scope and, on the next build, judges
only what follows the first entry that changed (the transcript changes near its end: a
prompt arrives, a reply finishes), the prompts being answered, and the entries a changed
pin moves. Where the first change is, a document's listings say (``Listing``); other lists
are compared. Its result is the one a walk from the start gives (tests/session/test_fold.py).

The prefix is kept only while what judges it is the same: the same ``ReadFilter`` (a read
scope as data, so it can be compared; any other callable judges afresh every time) and the
same server-side text.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

from parley.session.entries import MESSAGE_STATUS, Entry, EntryKind, Listing, ListingLog
from parley.session.lifecycle import PromptStatus, ReplyStatus

TOOL_DONE = "done"  # a tool step that returned a result (not an error or a refusal)

WithheldReason = Callable[[Entry], str | None]
"""A read scope: None when the run's issuers may read the entry, else why they may not."""


@dataclass(frozen=True, slots=True)
class Excluded:
    entry_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ReadFilter:
    """A read scope as data: why an entry with no restriction is withheld (None: it is
    not), and, for each entry with one, why it is (None: it is readable)."""

    unrestricted: str | None
    restricted: Mapping[str, str | None] = field(default_factory=dict)

    def __call__(self, entry: Entry) -> str | None:
        return self.restricted.get(entry.id, self.unrestricted)


def in_history(entry: Entry) -> bool:
    """Whether an entry not being answered belongs in a run's history at all: posted
    messages, answered prompts, finished replies and tool results."""
    return (
        (entry.kind is EntryKind.MESSAGE and entry.status == MESSAGE_STATUS)
        or (entry.kind is EntryKind.PROMPT and entry.status == PromptStatus.DONE)
        or (entry.kind is EntryKind.REPLY and entry.status == ReplyStatus.DONE)
        or (entry.kind is EntryKind.TOOL and entry.status == TOOL_DONE)
    )


@dataclass(frozen=True, slots=True)
class History:
    """A build's history: (entry, pinned) in story order, the entries withheld from it,
    and how many leading items are as the previous read of the same ``VisibleHistory``
    gave them (a fold synced with that read need not look at them again)."""

    items: list[tuple[Entry, bool]]
    withheld: list[Excluded]
    unchanged: int


def common_prefix(old: Sequence[Entry], new: Sequence[Entry]) -> int:
    """How many leading entries ``old`` and ``new`` share. The lists are compared in C
    (an unchanged entry is the same object, so mostly by identity), halving the range."""
    n = min(len(old), len(new))
    if old[:n] == new[:n]:
        return n
    low, high = 0, n  # old[:low] == new[:low]; they differ before ``high``
    while high - low > 1:
        middle = (low + high) // 2
        if old[low:middle] == new[low:middle]:
            low = middle
        else:
            high = middle
    return low


def first_asked(entries: Sequence[Entry], prompt_ids: Collection[str]) -> int:
    """The position of the first prompt answered (``len(entries)`` when none is), looked
    for from the end: the prompts a run answers are the newest entries but a few."""
    wanted = set(prompt_ids)
    first = len(entries)
    position = len(entries) - 1
    while wanted and position >= 0:
        entry_id = entries[position].id
        if entry_id in wanted:
            wanted.discard(entry_id)
            first = position
        position -= 1
    return first


class VisibleHistory:
    """The judged prefix of the transcript for one read scope (see the module)."""

    def __init__(self) -> None:
        self._entries: list[Entry] = []  # the transcript prefix judged, as it was given
        self._withheld: WithheldReason | None = None
        self._private: dict[str, str] = {}
        self._pins: frozenset[str] = frozenset()
        self._items: list[tuple[Entry, bool]] = []  # of the prefix, no prompt answered
        self._positions: list[int] = []  # the transcript position of each item
        self._index: dict[str, int] = {}  # entry id -> its index in ``_items``
        self._excluded: list[Excluded] = []
        self._excluded_at: list[int] = []  # the transcript position of each
        self._seen: tuple[ListingLog, int] | None = None  # the last listing read, if one

    def read(
        self,
        entries: Sequence[Entry],
        prompt_ids: Sequence[str],
        withheld: WithheldReason | None,
        private_text: Mapping[str, str],
        pins: frozenset[str],
    ) -> History:
        """The history of a run answering ``prompt_ids`` (none: the history alone);
        ``KeyError`` naming the prompts not in ``entries``."""
        reusable = withheld is None or isinstance(withheld, ReadFilter)
        if not reusable or withheld != self._withheld or private_text != self._private:
            self._withheld, self._private = withheld, dict(private_text)
            self._cut(0)
        start = first_asked(entries, prompt_ids)
        self._cut(min(self._shared_with(entries), start))
        moved = [self._index[p] for p in pins.symmetric_difference(self._pins) if p in self._index]
        self._pins = pins
        if moved:
            self._cut(self._positions[min(moved)])
        unchanged = len(self._items)
        for position in range(len(self._entries), start):
            self._judge(entries[position], position)
        self._entries.extend(entries[len(self._entries) : start])
        items, excluded = list(self._items), list(self._excluded)
        wanted = set(prompt_ids)
        for entry in entries[start:]:
            if not wanted:
                break
            answering = entry.id in wanted
            wanted.discard(entry.id)
            judged = self._verdict(entry, answering)
            if isinstance(judged, Excluded):
                excluded.append(judged)
            elif judged is not None:
                items.append((judged, entry.id in pins and not answering))
        if wanted:
            raise KeyError(sorted(wanted))
        return History(items, excluded, unchanged)

    def _shared_with(self, entries: Sequence[Entry]) -> int:
        """How many leading entries of the judged prefix ``entries`` begins with: told by
        the document's log when both are its listings, else found by comparing them."""
        seen, self._seen = self._seen, None
        if isinstance(entries, Listing):
            self._seen = (entries.log, entries.generation)
            if seen is not None and seen[0] is entries.log:
                shared = entries.log.shared(seen[1], entries.generation)
                if shared is not None:
                    return min(shared, len(self._entries))
        return common_prefix(self._entries, entries)

    def _verdict(self, entry: Entry, answering: bool = False) -> Entry | Excluded | None:
        """The entry as the history shows it (the server-side text in place of its
        placeholder), why it is withheld, or None when it is not history."""
        if not answering:
            if not in_history(entry):
                return None
            reason = None if self._withheld is None else self._withheld(entry)
            if reason is not None:
                return Excluded(entry.id, f"withheld: {reason}")
        text = self._private.get(entry.id)
        return entry if text is None else replace(entry, content=text)

    def _judge(self, entry: Entry, position: int) -> None:
        judged = self._verdict(entry)
        if isinstance(judged, Excluded):
            self._excluded.append(judged)
            self._excluded_at.append(position)
        elif judged is not None:
            self._index[entry.id] = len(self._items)
            self._items.append((judged, entry.id in self._pins))
            self._positions.append(position)

    def _cut(self, position: int) -> None:
        """Forget what was judged from transcript ``position`` on."""
        kept = bisect_left(self._positions, position)
        for entry, _ in self._items[kept:]:
            del self._index[entry.id]
        del self._items[kept:], self._positions[kept:]
        kept = bisect_left(self._excluded_at, position)
        del self._excluded[kept:], self._excluded_at[kept:]
        del self._entries[position:]
