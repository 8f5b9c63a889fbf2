"""The queue root's edits, as plain lists: they reach the plan, and no fewer would."""

from __future__ import annotations

from itertools import combinations

from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Doc

from parley.session.history import Excluded
from parley.session.queue import QueueLimits
from parley.session.queue_root import (
    ANSWERED_FIRST,
    RUNNING,
    not_given_yet,
    queue_edits,
    queue_of,
)
from parley.session.schema import QueuedItem, SessionDocument

ids = st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=7)


def _apply(current: list[str], wanted: list[str]) -> list[str]:
    deleted, inserted = queue_edits(current, wanted)
    root = list(current)
    for index in deleted:
        del root[index]
    for index in inserted:
        root.insert(index, wanted[index])
    return root


def _most_kept(current: list[str], wanted: list[str]) -> int:
    """The longest run of ``current`` already in ``wanted``'s order, by brute force."""
    for size in range(len(current), 0, -1):
        for kept in combinations(current, size):
            if all(id in wanted for id in kept) and [id for id in wanted if id in kept] == list(
                kept
            ):
                return size
    return 0


@given(ids, ids)
def test_the_edits_reach_the_plan(current: list[str], wanted: list[str]) -> None:
    assert _apply(current, wanted) == wanted


@given(ids, ids)
def test_no_fewer_edits_would_do(current: list[str], wanted: list[str]) -> None:
    deleted, inserted = queue_edits(current, wanted)
    kept = len(current) - len(deleted)
    assert kept == _most_kept(current, wanted)
    assert len(inserted) == len(wanted) - kept


def test_a_prompt_placed_mid_queue_is_one_insert() -> None:
    assert queue_edits(["a", "b", "c"], ["a", "x", "b", "c"]) == ([], [1])


def test_a_preview_lists_the_run_in_flight_and_the_runs_before_the_members() -> None:
    """Review RN-4: carol's run in flight (its prompt, tool step and reply so far) and dave's
    prompt, answered before bob's, are in bob's next call but not in the story yet: listed."""
    doc = SessionDocument(Doc())
    for n, author in enumerate(["carol", "dave", "bob"], start=1):
        doc.add_prompt(id=f"p{n}", seq=n, author=author, text="?", created_at=n)
    doc.set_queue([QueuedItem("p2", 2, "dave"), QueuedItem("p3", 3, "bob")])
    doc.start_reply(prompt_ids=["p1"], reply_id="r1", author="assistant", created_at=4)
    doc.add_tool_step(
        id="t1", reply_id="r1", author="bot", tool="s", status="running", text="", created_at=5
    )
    queue = queue_of(doc, QueueLimits())
    assert not_given_yet(doc, queue.running, queue.runs_to("p3")[:-1]) == [
        Excluded("p1", RUNNING),
        Excluded("t1", RUNNING),
        Excluded("r1", RUNNING),
        Excluded("p2", ANSWERED_FIRST),
    ]
    assert not_given_yet(doc, queue.running, queue.runs_to("p2")[:-1]) == [
        Excluded("p1", RUNNING),
        Excluded("t1", RUNNING),
        Excluded("r1", RUNNING),
    ]
    assert not_given_yet(doc, None) == []
