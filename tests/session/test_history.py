"""The kept history of a read scope gives what judging the transcript from nothing gives,
however the transcript, the pins and the read filter changed in between."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from parley.session.context import ContextBuilder, ContextSettings, build_context
from parley.session.entries import Entry, EntryKind, Listing, ListingLog
from parley.session.history import (
    History,
    ReadFilter,
    VisibleHistory,
    common_prefix,
    first_asked,
)
from parley.session.summary import Summary, extended, plan_extension
from tests.session.factories import entry

TEXTS = ["is the deploy done?", "Is the deploy DONE?", "lunch?", "the cache dir on runner 3"]
USERS = ["alice", "bob", "carol"]
VERDICTS = [None, "bob may not read it", "carol may not read it"]
CONFIG = ContextSettings(window_tokens=500, reserve_output_tokens=100)  # long sessions overflow

# Mostly what a live session does at its end (messages, prompts, answers), sometimes a
# change anywhere in the story (a pin, a restriction, an edited entry).
OPS = [
    "message",
    "message",
    "message",
    "prompt",
    "answer",
    "answer",
    "build",
    "build",
    "summarise",
    "pin",
    "restrict",
    "edit",
    "fail",
]
operations = st.lists(
    st.tuples(
        st.sampled_from(OPS),
        st.integers(0, 10_000),
        st.integers(0, 2),
    ),
    min_size=1,
    max_size=60,
)


def _text(n: int) -> str:
    """Text of its own mostly (so a long story overflows), now and then a repeat."""
    return TEXTS[n % 4] if n % 5 == 0 else " ".join(f"w{n}x{k}" for k in range(8))


class Session:
    """A transcript changed the ways a room changes it."""

    def __init__(self, messages: int) -> None:
        self.entries = [entry(n, USERS[n % 3], _text(n)) for n in range(1, messages + 1)]
        self.pins: list[str] = []
        self.verdicts: dict[str, str | None] = {}
        self.private: dict[str, str] = {}
        self.summaries: list[Summary] = []
        self.made = messages

    def apply(self, op: str, a: int, b: int) -> None:
        self.made += 1
        n, entries = self.made, self.entries
        waiting = [i for i, e in enumerate(entries) if e.status == "queued"]
        if op == "message":
            entries.append(entry(n, USERS[b], _text(a)))
        elif op == "prompt":
            entries.append(entry(n, USERS[b], TEXTS[a % 4], EntryKind.PROMPT))
        elif op in ("answer", "fail") and waiting:  # the oldest waiting prompt, as a queue
            i = waiting[0]
            status = "done" if op == "answer" else "failed"
            entries[i] = replace(entries[i], status=status)
            reply = entry(n, "model", f"answer {a % 3}", EntryKind.REPLY, status)
            entries.insert(i + 1, replace(reply, seq=entries[i].seq))
        elif op == "pin" and entries:
            target = entries[a % len(entries)].id
            toggled = [p for p in self.pins if p != target]
            self.pins = toggled if target in self.pins else [*self.pins, target]
        elif op == "restrict" and entries:
            target = entries[a % len(entries)].id
            self.verdicts[target] = VERDICTS[b]
            self.private[target] = f"the full text behind {target}"
        elif op == "summarise":  # as the summariser does; b == 2: a new chain
            read, readable = self.scope()
            built = build_context(
                session_id="s",
                entries=entries,
                prompt_ids=[],
                pins=self.pins,
                settings=CONFIG,
                withheld=read,
                private_text=readable,
                summaries=self.summaries,
            )
            previous = None if b == 2 else built.summary
            plan = plan_extension(
                built.dropped, previous, min_tokens=1, max_input_tokens=50 + a % 400
            )
            if plan is not None and plan.items:
                self.summaries.append(extended(plan, f"sum{n}", f"summary {n}"))
        elif op == "edit" and entries:
            i = a % len(entries)
            entries[i] = replace(entries[i], content=TEXTS[(a + 1) % 4])

    def asked(self, a: int) -> list[str]:
        waiting = [e.id for e in self.entries if e.status == "queued"]
        return waiting[: 1 + a % 2] if waiting and a % 3 else []

    def scope(self) -> tuple[ReadFilter, dict[str, str]]:
        read = ReadFilter(None, dict(self.verdicts))
        readable = {i: t for i, t in self.private.items() if self.verdicts.get(i) is None}
        return read, readable


def _from_nothing(session: Session, prompt_ids: list[str]) -> History:
    read, readable = session.scope()
    return VisibleHistory().read(
        session.entries, prompt_ids, read, readable, frozenset(session.pins)
    )


class Lister:
    """Numbers a session's listings as a document does: each with how many leading
    entries it shares with the one before (some fewer than it does: a document may
    understate, never overstate)."""

    def __init__(self, seed: int) -> None:
        self.log = ListingLog(keep=4)  # short: some reads fall back to comparing
        self.last: list[Entry] | None = None
        self.rng = random.Random(seed)

    def __call__(self, entries: list[Entry]) -> Listing:
        shared = 0 if self.last is None else common_prefix(self.last, entries)
        if self.rng.random() < 0.2:
            shared = self.rng.randint(0, shared)
        self.last = list(entries)
        return Listing(entries, self.log, self.log.listed(shared))


def _check(session: Session, ops: list[tuple[str, int, int]], listed: bool = False) -> None:
    """Carry out ``ops``; at each build, the kept history and the kept builder give what
    ones made from nothing give (``listed``: given the entries as a document's numbered
    listings, which say where each parts from the last)."""
    kept = VisibleHistory()
    builder = ContextBuilder(CONFIG)
    lister = Lister(len(ops))
    for op, a, b in ops:
        if op != "build":
            session.apply(op, a, b)
            continue
        prompt_ids = session.asked(a)
        read, readable = session.scope()
        pins = frozenset(session.pins)
        entries = lister(session.entries) if listed else session.entries
        got = kept.read(entries, prompt_ids, read, readable, pins)
        fresh = _from_nothing(session, prompt_ids)
        assert (got.items, got.withheld) == (fresh.items, fresh.withheld)
        given: dict[str, Any] = {
            "session_id": "s",
            "entries": entries,
            "prompt_ids": prompt_ids,
            "pins": session.pins,
            "withheld": read,
            "private_text": readable,
            "summaries": session.summaries,
        }
        assert builder.build(**given) == build_context(settings=CONFIG, **given)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 60), operations, st.booleans())
def test_the_kept_history_equals_one_judged_from_nothing(
    messages: int, ops: list[tuple[str, int, int]], listed: bool
) -> None:
    _check(Session(messages), ops, listed)


def test_long_random_sessions_build_as_from_nothing() -> None:
    """Longer stories than hypothesis makes: summaries then cover many turns, which the
    kept builder skips: a stale count of them fails here."""
    for seed in range(150):
        rng = random.Random(seed)
        ops = [(rng.choice(OPS), rng.randint(0, 10_000), rng.randint(0, 2)) for _ in range(60)]
        _check(Session(rng.randint(20, 60)), ops, listed=seed % 2 == 1)


def test_a_listing_is_taken_at_its_word() -> None:
    """The history judges again only what follows the entries a listing says it shares
    with the last one read (so that word must be true: the document's tests check it)."""
    session = Session(10)
    log = ListingLog()
    kept = VisibleHistory()
    read, readable = session.scope()
    first = Listing(session.entries, log, log.listed(0))
    kept.read(first, [], read, readable, frozenset())
    session.apply("edit", 3, 0)  # an entry far back changes; the log says it did not
    told = kept.read(Listing(session.entries, log, log.listed(10)), [], read, readable, frozenset())
    compared = VisibleHistory()
    compared.read(first, [], read, readable, frozenset())
    found = compared.read(list(session.entries), [], read, readable, frozenset())
    assert told.unchanged == 10 and found.unchanged < 10


def test_a_new_message_is_the_one_entry_judged() -> None:
    session = Session(2000)
    kept = VisibleHistory()
    read, readable = session.scope()
    first = kept.read(session.entries, [], read, readable, frozenset())
    assert first.unchanged == 0 and len(first.items) == 2000
    session.apply("prompt", 0, 0)
    prompt_id = session.entries[-1].id
    asked = kept.read(session.entries, [prompt_id], read, readable, frozenset())
    assert asked.unchanged == 2000 and asked.items[-1][0].id == prompt_id
    session.apply("answer", 0, 0)
    after = kept.read(session.entries, [], read, readable, frozenset())
    assert after.unchanged == 2000 and [e.id for e, _ in after.items[-2:]] == [
        prompt_id,
        session.entries[-1].id,
    ]


def test_a_pin_far_back_judges_again_from_the_pinned_entry() -> None:
    session = Session(100)
    kept = VisibleHistory()
    read, readable = session.scope()
    kept.read(session.entries, [], read, readable, frozenset())
    again = kept.read(session.entries, [], read, readable, frozenset({"e10"}))
    assert again.unchanged == 9
    assert [e.id for e, pinned in again.items if pinned] == ["e10"]


def test_another_read_filter_judges_everything_again() -> None:
    session = Session(50)
    kept = VisibleHistory()
    kept.read(session.entries, [], ReadFilter(None, {}), {}, frozenset())
    hidden = ReadFilter(None, {"e5": "bob may not read it"})
    again = kept.read(session.entries, [], hidden, {}, frozenset())
    assert again.unchanged == 0
    assert [x.entry_id for x in again.withheld] == ["e5"]


def test_an_unknown_prompt_is_a_key_error() -> None:
    session = Session(5)
    try:
        VisibleHistory().read(session.entries, ["nope"], None, {}, frozenset())
    except KeyError as exc:
        assert exc.args[0] == ["nope"]
    else:
        raise AssertionError("no KeyError")


def _naive_prefix(old: list[Entry], new: list[Entry]) -> int:
    n = 0
    while n < min(len(old), len(new)) and old[n] == new[n]:
        n += 1
    return n


@given(st.lists(st.integers(0, 3), max_size=40), st.lists(st.integers(0, 3), max_size=40))
def test_common_prefix_is_the_naive_one(old: list[int], new: list[int]) -> None:
    olds = [entry(i + 1, "a", TEXTS[t]) for i, t in enumerate(old)]
    news = [entry(i + 1, "a", TEXTS[t]) for i, t in enumerate(new)]
    assert common_prefix(olds, news) == _naive_prefix(olds, news)


@given(st.lists(st.booleans(), max_size=30), st.lists(st.integers(0, 40), max_size=4))
def test_first_asked_is_the_first_position_asked(kinds: list[bool], asked: list[int]) -> None:
    entries = [entry(i + 1, "a", "x") for i in range(len(kinds))]
    ids = [f"e{n}" for n in asked]
    positions = [i for i, e in enumerate(entries) if e.id in ids]
    assert first_asked(entries, ids) == (positions[0] if positions else len(entries))


def test_a_listing_log_tells_the_least_shared_between_two_listings() -> None:
    log = ListingLog(keep=3)
    for shared in (0, 5, 7, 3, 9):  # listings 1 to 5; the log keeps the last three
        log.listed(shared)
    assert log.shared(2, 5) == 3 and log.shared(2, 3) == 7 and log.shared(4, 5) == 9
    assert log.shared(1, 5) is None  # what listing 2 shares is no longer known
    assert log.shared(5, 5) == 1 << 62  # the same listing: all of it
