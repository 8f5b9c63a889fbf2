"""Judging what the store read back after a failed write holds beyond the committed
document, from the committed copy's parts and state vector, with no committed document
built: the same verdict as judging it against that document."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc

from parley.session.read_only import ServerWrites, deletes_in_steps, holds_beyond
from parley.session.yprotocol import delete_set_of, normalise_delete_set
from tests.session.test_encoded import CHANGES, _served, apply_change
from tests.session.test_loading import run_steps


@settings(max_examples=60, deadline=None)
@given(before=CHANGES, after=CHANGES, chunk_bytes=st.sampled_from([64, 256, 64 * 1024]))
def test_the_delete_set_read_from_the_parts_is_the_documents(
    before: list[Any], after: list[Any], chunk_bytes: int
) -> None:
    doc, encoded = _served(before, after, chunk_bytes)
    state = doc.get_state()
    parts = encoded.parts()
    deletes, steps = run_steps(deletes_in_steps(parts, state))
    assert deletes == normalise_delete_set(delete_set_of(doc.get_update(), state))
    assert steps == len(parts)  # one part a step


@settings(max_examples=80, deadline=None)
@given(
    before=CHANGES,
    after=CHANGES,
    lost=CHANGES,
    chunk_bytes=st.sampled_from([64, 256, 64 * 1024]),
)
def test_what_the_store_holds_beyond_the_copy_is_judged_as_against_the_document(
    before: list[Any], after: list[Any], lost: list[Any], chunk_bytes: int
) -> None:
    """``lost``: a write thought failed, in the store read back (none: nothing beyond)."""
    doc, encoded = _served(before, after, chunk_bytes)
    stored: Doc[Any] = Doc()
    stored.apply_update(doc.get_update())
    for change in lost:
        apply_change(stored, change)
    state = doc.get_state()
    deletes, _ = run_steps(deletes_in_steps(encoded.parts(), state))
    beyond = holds_beyond(stored, state, deletes)
    assert beyond == (not ServerWrites(None).is_noop(doc, stored.get_update(state)))
    if not lost:
        assert not beyond


def test_a_deletion_alone_in_the_store_is_beyond() -> None:
    doc, encoded = _served([("append", 1), ("append", 2)], [("append", 3)], 64)
    stored: Doc[Any] = Doc()
    stored.apply_update(doc.get_update())
    apply_change(stored, ("delete", 0))
    state = doc.get_state()
    assert stored.get_state() == state  # no struct beyond: the deletion alone differs
    deletes, _ = run_steps(deletes_in_steps(encoded.parts(), state))
    assert holds_beyond(stored, state, deletes)
