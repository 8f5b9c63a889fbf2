"""The queue root's edits, as plain lists: they reach the plan, and no fewer would."""

from __future__ import annotations

from itertools import combinations

from hypothesis import given
from hypothesis import strategies as st

from parley.session.queue_root import queue_edits

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
