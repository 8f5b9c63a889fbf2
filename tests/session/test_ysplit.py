"""Cutting one Yjs update into bounded updates: each valid, together the same document."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text

from parley.session.ysplit import split_update
from tests.ystate import state_of


def _writers(generations: int, entries: int, seed: int) -> Doc[Any]:
    """A document written by ``generations`` writers one after another (a server that
    restarted: a new client id each time), each appending, editing and deleting entries
    of every shape a session holds."""
    rng = random.Random(seed)
    doc: Doc[Any] = Doc()
    for generation in range(generations):
        nxt: Doc[Any] = Doc()
        nxt.apply_update(doc.get_update())
        transcript = nxt.get("transcript", type=Array)
        for n in range(entries):
            entry = Map(
                {"id": f"{generation}-{n}", "n": n, "f": 0.5, "ok": True, "x": {"y": [1, None]}}
            )
            transcript.append(entry)
            entry["content"] = Text("é😀 " * rng.randint(1, 200))
            if rng.random() < 0.3:
                entry["content"] += "more"
            if rng.random() < 0.2 and len(transcript) > 1:
                del transcript[rng.randrange(len(transcript))]
        nxt.get("meta", type=Map)["generation"] = generation
        doc = nxt
    return doc


def content(doc: Doc[Any]) -> Any:
    return doc.get("transcript", type=Array).to_py(), doc.get("meta", type=Map).to_py()


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 40), st.integers(64, 4096), st.integers(0, 1000))
def test_the_parts_are_bounded_and_make_the_document_in_order(
    generations: int, entries: int, max_bytes: int, seed: int
) -> None:
    """Applied in order, as they are sent, the parts make the document. (Yjs applies them
    in any order; pycrdt, whose pending updates do not wait for one another, only in
    order: the server's client order puts each writer after those it refers to.)"""
    doc = _writers(generations, entries, seed)
    whole = doc.get_update()
    parts = split_update(whole, max_bytes)
    if len(whole) <= max_bytes:
        assert parts == [whole]
    largest_struct = 800 * 4 + 200  # one entry's text, the most one struct here holds
    assert all(len(part) <= max(max_bytes, largest_struct) for part in parts)
    rebuilt: Doc[Any] = Doc()
    for part in parts:
        rebuilt.apply_update(part)
    assert content(rebuilt) == content(doc)
    assert state_of(rebuilt) == state_of(doc)


def test_a_large_document_is_cut_into_parts_within_the_bound() -> None:
    doc = _writers(3, 300, 7)
    whole = doc.get_update()
    parts = split_update(whole, 16 * 1024)
    assert len(parts) >= len(whole) // (16 * 1024)
    assert max(map(len, parts)) <= 16 * 1024
    # The parts are the update's bytes cut, not a larger encoding of it.
    assert sum(map(len, parts)) < len(whole) * 1.05


def test_one_struct_larger_than_the_bound_is_a_part_of_its_own() -> None:
    doc: Doc[Any] = Doc()
    transcript = doc.get("transcript", type=Array)
    transcript.append(Text("a" * 10_000))
    transcript.append(Text("b" * 100))
    parts = split_update(doc.get_update(), 1024)
    assert len(parts) > 1 and max(map(len, parts)) > 10_000
    rebuilt: Doc[Any] = Doc()
    for part in parts:
        rebuilt.apply_update(part)
    assert rebuilt.get("transcript", type=Array).to_py() == ["a" * 10_000, "b" * 100]


def test_an_update_it_cannot_read_is_kept_whole() -> None:
    broken = b"\x01\x05\x01\x00\x1f" + b"\x00" * 5000  # a struct of an unknown content ref
    assert split_update(broken, 1024) == [broken]


def _short_entries(count: int) -> Doc[Any]:
    """Many tiny items (what reading costs most per byte), none deleted."""
    doc: Doc[Any] = Doc()
    transcript = doc.get("transcript", type=Array)
    for n in range(count):
        transcript.append(Map({"id": f"m{n}", "seq": n, "ok": n % 2 == 0, "t": f"hé {n}"}))
    return doc


def test_a_document_of_short_entries_is_cut_within_the_bound() -> None:
    doc = _short_entries(400)
    parts = split_update(doc.get_update(), 2048)
    assert len(parts) > 5 and max(map(len, parts)) <= 2048
    rebuilt: Doc[Any] = Doc()
    for part in parts:
        rebuilt.apply_update(part)
    assert content(rebuilt)[0] == content(doc)[0]


def test_an_update_cut_short_is_kept_whole() -> None:
    """Cut anywhere before its delete set, an update ends inside a struct or before one its
    counts promise: unreadable, it is kept whole (never parts that lose the end)."""
    whole = _short_entries(20).get_update()
    assert whole.endswith(b"\x00")  # nothing deleted: the delete set is its last byte
    for end in range(1, len(whole) - 1):
        assert split_update(whole[:end], 64) == [whole[:end]]
