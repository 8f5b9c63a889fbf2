"""What a run sees of the transcript, judged once per entry and kept between builds.

A build's history is every message, ended prompt, ended reply with text and tool result
the run's issuers may read, up to its (last) prompt, then the prompts it answers
(``session.context``). A prompt that got no full answer (the model's service failed, the
stream was cut, a newer prompt interrupted it, an owner cancelled it) is still what its
member said: it is given as what they wrote, with the server's line saying how it ended
(``outcome``), and so is the part of its reply that was written, marked as cut off. Left
out, and listed with why (``left_out``): a prompt its own author withdrew (cancelled), a
prompt too large for the window, and the replies and tool steps of a run a prompt of
which is left out (withheld, say: given, they would answer a question the model is not
shown); and a pinned entry that is not history (still waiting, an empty reply, a tool step
without a result): a pin is given or listed, never silently dropped. A pinned reply given
takes the prompts it answers into the pins with it (``companions``): without them it
answered a question the model was not shown once they left the window.

Judging that afresh walked the whole transcript on every build; ``VisibleHistory`` keeps
the judged prefix of one read scope and, on the next build, judges only what follows the
first entry that changed (the transcript changes near its end: a prompt arrives, a reply
finishes), the prompts being answered, and the entries a changed pin moves. Where the
first change is, a document's listings say (``Listing``); other lists are compared. Its
result is the one a walk from the start gives (tests/session/test_fold.py).

The prefix is kept only while what judges it is the same: the same ``ReadFilter`` (a read
scope as data, so it can be compared; any other callable judges afresh every time) and the
same server-side text.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from parley.session.entries import MESSAGE_STATUS, Entry, EntryKind, Listing, ListingLog
from parley.session.lifecycle import PromptStatus, ReplyStatus
from parley.session.reasons import ReasonCode, withdrawn

TOOL_DONE = "done"  # a tool step that returned a result (not an error or a refusal)
UNANSWERED = frozenset({PromptStatus.FAILED, PromptStatus.CANCELLED, PromptStatus.INTERRUPTED})

JUDGED_PER_STEP = 1024
"""Entries a read in steps judges in one (``VisibleHistory.reading``): a few microseconds
each."""

# Why a reply or a tool step is left out with its run's prompts: all of them, or some (a
# coalesced run's reply answers every one: given with one, it reads as that one's answer).
RUN_LEFT_OUT = "its run's prompts are left out"
PROMPT_LEFT_OUT = "a prompt of its run is left out"

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


# Why a prompt got no full answer, as the server's line tells the model: fixed words per
# code, never the ending's sentence (a provider's error may quote what the run read).
CAUSES: dict[ReasonCode, str] = {
    ReasonCode.CANCELLED: "cancelled by another member",
    ReasonCode.SUPERSEDED: "a newer prompt interrupted it",
    ReasonCode.TIMEOUT: "no answer in time",
    ReasonCode.PROVIDER_ERROR: "the model's service failed",
    ReasonCode.QUOTA_EXCEEDED: "a token quota was reached",
    # A run answers the prompts of several members (``coalesce``) and ends for all of them
    # when one loses a right, or may not read what it drew on: the words name no author
    # (review RD-2: "its author may no longer prompt" told the model alice had lost a right
    # when bob had, or when a tool's answer was for alice's eyes alone).
    ReasonCode.FORBIDDEN: "the rights of those who asked no longer allowed it",
    ReasonCode.MEMBER_REMOVED: "a member who asked was removed",
    ReasonCode.TOKEN_REVOKED: "the token of a member who asked was revoked",
    ReasonCode.TOO_LARGE: "it did not fit the context window",
    ReasonCode.UNAVAILABLE: "the server could not read its database",
    ReasonCode.STORAGE_ERROR: "the server's database failed",
    ReasonCode.SERVER_SHUTDOWN: "the server stopped",
    ReasonCode.SERVER_RESTART: "the server stopped",
    ReasonCode.FAILOVER: "the server stopped",
    ReasonCode.INTERNAL_ERROR: "a server error",
}


def _cause(entry: Entry) -> str:
    code = entry.reason_code
    return CAUSES[ReasonCode(code)] if code in CAUSES else "it ended early"


def in_history(entry: Entry) -> bool:
    """Whether an entry not being answered belongs in a run's history at all: posted
    messages, ended prompts, ended replies and tool results (``VisibleHistory`` then leaves
    out what ``left_out`` names, and a reply with no text)."""
    kind = entry.kind
    if kind is EntryKind.PROMPT:
        return entry.status == PromptStatus.DONE or entry.status in UNANSWERED
    if kind is EntryKind.REPLY:
        return entry.status != ReplyStatus.STREAMING
    if kind is EntryKind.TOOL:
        return entry.status == TOOL_DONE
    return entry.status == MESSAGE_STATUS


def left_out(entry: Entry) -> str | None:
    """Why an ended prompt is not history (None: it is): withdrawn by its own author, or
    too large for the window (given, it would leave out every turn before it)."""
    if entry.kind is not EntryKind.PROMPT or entry.status not in UNANSWERED:
        return None
    if withdrawn(entry.reason_code, entry.reason, entry.author):
        return "withdrawn: cancelled by its author"
    if entry.reason_code == ReasonCode.TOO_LARGE:
        return f"not answered: {CAUSES[ReasonCode.TOO_LARGE]}"
    return None


def outcome(entry: Entry) -> str | None:
    """The server's clause on a history entry that did not end as asked (None: it did): a
    prompt with no full answer, or a reply cut off. Never a member's words."""
    if entry.kind is EntryKind.PROMPT and entry.status in UNANSWERED:
        return f"no complete answer: {_cause(entry)}"
    if entry.kind is EntryKind.REPLY and entry.status not in (
        ReplyStatus.DONE,
        ReplyStatus.STREAMING,
    ):
        return f"the reply was cut off here: {_cause(entry)}"
    return None


def outcome_line(entry: Entry) -> str | None:
    """``outcome`` as the server's line, given after the entry's text."""
    clause = outcome(entry)
    return None if clause is None else f"[{clause}]"


def _unfinished(entry: Entry) -> str:
    """Why a pinned entry that is not history is not given."""
    if entry.kind is EntryKind.PROMPT:
        return "pinned, not given yet: still waiting for its answer"
    if entry.kind is EntryKind.REPLY:
        if entry.status == ReplyStatus.STREAMING:
            return "pinned, not given yet: still being written"
        return "pinned, not given: it has no text"
    return "pinned, not given: a tool step with no result"


@dataclass(frozen=True, slots=True)
class History:
    """A build's history: (entry, pinned) in story order, the entries withheld from it,
    how many leading items are as the previous read of the same ``VisibleHistory`` gave
    them, and how many a fold of the reads before holds as they are (``held``: it need not
    look at them again; ``VisibleHistory.folded``). ``number`` tells the read."""

    items: list[tuple[Entry, bool]]
    withheld: list[Excluded]
    unchanged: int
    held: int = 0
    number: int = 0
    # The prompts given with a pinned reply: id -> the reply's.
    companions: Mapping[str, str] = field(default_factory=dict)


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
        # Of each run whose prompts were judged (by its reply's id): whether each of its
        # prompts is given; with the transcript position of each, to cut them back.
        self._runs: dict[str, list[bool]] = {}
        self._run_at: list[tuple[int, str]] = []
        # The prompts given with each pinned reply (``_pin_run``): their id -> the reply's;
        # and by the reply's transcript position, their items, to cut back.
        self._companions: dict[str, str] = {}
        self._pinned_runs: list[tuple[int, list[int]]] = []
        self._seen: tuple[ListingLog, int] | None = None  # the last listing read, if one
        self._reads = 0  # reads begun: a read in steps stops once another began
        # How many leading items of the judged prefix the fold of this scope holds as they
        # are (``folded``): a read cuts it where it cuts the prefix. Not simply what the
        # read before left: a fold ahead reads, and a build may come before it has folded
        # (or rolled back) what that read changed, so the fold may hold entries the read
        # before withheld (review FX43: a build then gave the model an entry withheld).
        self._folded = 0

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
        reading = self.reading(entries, prompt_ids, withheld, private_text, pins, steps=0)
        try:
            next(reading)  # one step judges them all: it returns at once
        except StopIteration as done:
            history: History = done.value
            return history
        raise AssertionError("a read in one step yielded")

    def reading(
        self,
        entries: Sequence[Entry],
        prompt_ids: Sequence[str],
        withheld: WithheldReason | None,
        private_text: Mapping[str, str],
        pins: frozenset[str],
        steps: int = JUDGED_PER_STEP,
    ) -> Generator[int, None, History | None]:
        """``read`` in steps, each judging ``steps`` entries (0: all), yielding how many it
        judged (none is yielded when one step judges all): a caller that lets others run
        between them spreads a first read of a long history (60,000 entries judged in one
        call held the loop 150 ms). Returns the history, or None when another read of this
        one began meanwhile: that read judged the rest; what was judged here stays judged."""
        self._reads += 1
        mine = self._reads
        reusable = withheld is None or isinstance(withheld, ReadFilter)
        if not reusable or withheld != self._withheld or private_text != self._private:
            self._withheld, self._private = withheld, dict(private_text)
            self._cut(0)
        start = first_asked(entries, prompt_ids)
        self._cut(min(self._shared_with(entries), start))
        moved = self._moved(pins.symmetric_difference(self._pins))
        self._pins = pins
        if moved:
            self._cut(min(moved))
        unchanged = len(self._items)
        self._folded = min(self._folded, unchanged)
        while len(self._entries) < start:
            end = start if steps <= 0 else min(start, len(self._entries) + steps)
            judged = self._judge_to(entries, end)
            if end < start:
                yield judged
                if self._reads != mine:
                    return None
        return self._history(entries, start, prompt_ids, pins, unchanged)

    def folded(self, history: History, count: int) -> None:
        """A fold now holds the first ``count`` items of ``history`` as they are: the next
        read's ``held`` counts on them (unless a read began since ``history``'s)."""
        if history.number == self._reads:
            self._folded = count

    def _judge_to(self, entries: Sequence[Entry], end: int) -> int:
        """Judge ``entries`` from the end of the judged prefix up to ``end``; how many."""
        begin = len(self._entries)
        for position in range(begin, end):
            self._judge(entries[position], position)
        self._entries.extend(entries[begin:end])
        return end - begin

    def _history(
        self,
        entries: Sequence[Entry],
        start: int,
        prompt_ids: Sequence[str],
        pins: frozenset[str],
        unchanged: int,
    ) -> History:
        """The judged prefix, then the prompts answered from ``start`` on."""
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
        companions = dict(self._companions)
        return History(items, excluded, unchanged, self._folded, self._reads, companions)

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

    def _moved(self, changed: frozenset[str]) -> list[int]:
        """The transcript positions of the judged entries whose pin ``changed``: an item's
        is kept; another's (a pin of what is not history is listed) is looked for, which
        costs a walk of the judged prefix as often as such a pin changes."""
        moved = [self._positions[self._index[p]] for p in changed if p in self._index]
        others = changed.difference(self._index)
        if others:
            moved += [n for n, entry in enumerate(self._entries) if entry.id in others]
        return moved

    def _verdict(self, entry: Entry, answering: bool = False) -> Entry | Excluded | None:
        """The entry as the history shows it (the server-side text in place of its
        placeholder), why it is withheld or left out, or None when it is not history
        (and not pinned: a pin not given is listed)."""
        text = self._private.get(entry.id)
        if not answering:
            if not in_history(entry) or self._unsaid(entry, text):
                return Excluded(entry.id, _unfinished(entry)) if entry.id in self._pins else None
            why = left_out(entry) or self._run_left_out(entry)
            if why is not None:
                return Excluded(entry.id, why)
            reason = None if self._withheld is None else self._withheld(entry)
            if reason is not None:
                return Excluded(entry.id, f"withheld: {reason}")
        return entry if text is None else replace(entry, content=text)

    @staticmethod
    def _unsaid(entry: Entry, text: str | None) -> bool:
        """A reply of blanks alone (``text``: its server-side text, if kept and readable),
        cut off before its first word or ended so: nothing was said. (Anthropic's API
        refuses a turn of blank text, so such a reply given failed every later call of
        the session: review RD-3.)"""
        if entry.kind is not EntryKind.REPLY:
            return False
        return not (entry.content if text is None else text).strip()

    def _run_left_out(self, entry: Entry) -> str | None:
        """Why a reply or a tool step is left out with a prompt of its run (None: every
        one of them is given, or it is neither)."""
        if entry.kind is EntryKind.REPLY:
            run = self._runs.get(entry.id)
        elif entry.kind is EntryKind.TOOL and entry.reply_to is not None:
            run = self._runs.get(entry.reply_to)
        else:
            return None
        if not run or all(run):
            return None
        return PROMPT_LEFT_OUT if any(run) else RUN_LEFT_OUT

    def _judge(self, entry: Entry, position: int) -> None:
        judged = self._verdict(entry)
        if entry.kind is EntryKind.PROMPT and entry.reply_id is not None:
            self._runs.setdefault(entry.reply_id, []).append(isinstance(judged, Entry))
            self._run_at.append((position, entry.reply_id))
        if isinstance(judged, Excluded):
            self._excluded.append(judged)
            self._excluded_at.append(position)
        elif judged is not None:
            self._index[entry.id] = len(self._items)
            pinned = entry.id in self._pins
            self._items.append((judged, pinned))
            self._positions.append(position)
            if pinned and entry.kind is EntryKind.REPLY:
                self._pin_run(entry, position)

    def _pin_run(self, reply: Entry, position: int) -> None:
        """Mark pinned the items of the prompts pinned ``reply`` answers: they are given
        with it in the pins, not in the story. A reply given without them answered a
        question the model was not shown once they left the window (summarised, over
        budget); one not given (withheld, a prompt of its run left out) leaves them where
        they are. (Its tool steps stay in the story: a reply stands without them, and a
        search's passages would make a reply too large to pin.)"""
        prompts = reply.answers or ((reply.reply_to,) if reply.reply_to else ())
        flipped: list[int] = []
        for index in sorted(self._index[p] for p in prompts if p in self._index):
            said, pinned = self._items[index]
            if pinned:
                continue  # pinned itself
            self._items[index] = (said, True)
            self._companions[said.id] = reply.id
            flipped.append(index)
        if flipped:
            self._folded = min(self._folded, flipped[0])  # the fold holds them unpinned
            self._pinned_runs.append((position, flipped))

    def _cut(self, position: int) -> None:
        """Forget what was judged from transcript ``position`` on."""
        while self._pinned_runs and self._pinned_runs[-1][0] >= position:
            for index in self._pinned_runs.pop()[1]:  # its reply is judged again, if kept
                said = self._items[index][0]
                self._items[index] = (said, False)
                del self._companions[said.id]
                self._folded = min(self._folded, index)
        kept = bisect_left(self._positions, position)
        for entry, _ in self._items[kept:]:
            del self._index[entry.id]
        del self._items[kept:], self._positions[kept:]
        kept = bisect_left(self._excluded_at, position)
        del self._excluded[kept:], self._excluded_at[kept:]
        while self._run_at and self._run_at[-1][0] >= position:
            reply_id = self._run_at.pop()[1]
            prompts = self._runs[reply_id]
            prompts.pop()
            if not prompts:
                del self._runs[reply_id]
        del self._entries[position:]
