"""A side-thread's document with no I/O: built from the stored thread, brought to each
stored turn (tool steps before the reply being written, streamed text kept or corrected),
and a client's copy of another document told apart."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pycrdt import Array, Doc, write_var_uint

from parley.authz.policy import Readers
from parley.session.core import SideThread, ThreadTurn
from parley.session.core.thread_doc import ThreadDocument, show_all, thread_document
from parley.session.yitems import TEXT_BLOCK_UNITS
from parley.session.yprotocol import delete_set_of


def turn(id: str, kind: str, text: str, status: str = "done", **extra: Any) -> ThreadTurn:
    return ThreadTurn(
        id, "t", 0, kind, "bob" if kind == "prompt" else "fake", text, status, 5, **extra
    )


def shown(document: ThreadDocument) -> list[tuple[str, str, str, str]]:
    return [(t["id"], t["role"], t["status"], str(t["content"])) for t in document.turns]


def test_the_document_follows_the_stored_turns_of_a_run() -> None:
    thread = SideThread("t", "bob", 3, "title", "open", 1, (turn("p", "prompt", "q?", "running"),))
    document = thread_document(thread)
    assert document.thread.to_py() == {
        "id": "t",
        "owner": "bob",
        "title": "title",
        "anchor_seq": 3,
        "status": "open",
        "created_at": 1,
        "schema_version": 1,
    }
    document.start_reply("r", "fake", 6)
    document.append_text("r", "The 50")
    document.show_turn(
        turn("k", "tool", "search: done", restriction=Readers("d", frozenset())), "r"
    )
    document.append_text("r", "2s")
    assert shown(document) == [
        ("p", "user", "running", "q?"),
        ("k", "tool", "done", "search: done"),
        ("r", "assistant", "streaming", "The 502s"),
    ]
    # Settled: the stored reply goes on from what streamed; the prompt's status follows.
    document.show_turn(turn("p", "prompt", "q?", "done"))
    document.show_turn(turn("r", "reply", "The 502s come from the proxy."))
    assert shown(document)[-1] == ("r", "assistant", "done", "The 502s come from the proxy.")
    assert document.turns[1]["restricted"] is True
    # A stored text that is not what streamed replaces it.
    document.show_turn(turn("r", "reply", "Other.", "failed", reason_code="timeout"))
    assert shown(document)[-1] == ("r", "assistant", "failed", "Other.")
    assert document.turns[2]["reason_code"] == "timeout"
    assert "retry_at" not in document.turns[2]  # no time told: no key, as on an entry
    # A quota's ending tells when to send it again (FX78), on the prompt and its reply.
    document.show_turn(
        turn("p", "prompt", "q?", "failed", reason_code="quota_exceeded", retry_at=7)
    )
    assert document.turns[0]["retry_at"] == 7


def test_a_client_copy_of_another_build_is_told_apart() -> None:
    thread = SideThread("t", "bob", 0, "", "open", 1, (turn("p", "prompt", "q?"),))
    first, again = thread_document(thread), thread_document(thread)
    client = Doc()
    client.apply_update(first.doc.get_update())
    assert first.covers(client.get_state()) and first.covers(b"\x00")
    first.append_text("p", "more")  # the server moved on: the client is behind, not elsewhere
    assert first.covers(client.get_state())
    assert not again.covers(client.get_state())


def test_a_state_listing_more_clients_than_the_document_is_told_apart_unread() -> None:
    """Review: a state vector of 690,000 entries (4 MB) was read whole in Python, a
    second of the loop each; one listing more clients than the server's is another
    document's, told by its first number (here the rest is missing: it is never read)."""
    document = thread_document(
        SideThread("t", "bob", 0, "", "open", 1, (turn("p", "prompt", "q"),))
    )
    assert not document.covers(write_var_uint(690_000) + b"\x01")


def test_a_stored_document_is_read_and_followed_without_reading_turns_by_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A turn read by its index costs a walk from the first (yrs): a document of n turns
    read back that way cost n²/2 steps (a minute at 10,000 turns, under the writer lock).
    Reading one back, showing the stored thread on it, and a follower's updates to it
    (turns added and removed) read no turn by its index."""
    turns = tuple(turn(f"p{i}", "prompt" if i % 2 else "reply", f"text {i}") for i in range(60))
    thread = SideThread("t", "bob", 0, "", "open", 1, turns)
    source = thread_document(thread)
    reads: list[object] = []
    by_index = Array.__getitem__

    def counted(array: Array[object], key: object) -> object:
        reads.append(key)
        return by_index(array, key)

    monkeypatch.setattr(Array, "__getitem__", counted)
    document = ThreadDocument.read(source.doc.get_update())
    show_all(document, thread)
    state = source.doc.get_state()
    source.show_turn(turn("k", "tool", "search: done"), before="p59")
    source.drop_unstored({t.id for t in turns[2:]} | {"k"})
    document.apply(source.doc.get_update(state))
    assert reads == []
    monkeypatch.undo()
    assert document.turn_ids() == source.turn_ids() == [t["id"] for t in document.turns]
    assert document.turn_ids()[:2] == ["p2", "p3"] and document.turn_ids()[-2:] == ["k", "p59"]
    document.append_text("k", " (3 found)")  # a turn it was sent is found by its id
    assert str(document.turns[-2]["content"]) == "search: done (3 found)"


def test_a_document_built_from_the_rows_inserts_each_turn_where_no_walk_is_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FX43: a thread stored before its document's log was kept is shown from its rows.
    Added one after another, each turn's insert walked every turn before it (yrs), so the
    build took time in the square of its turns (20,000: 39 s in one block of the loop).
    They are inserted the newest first, each where the document's turns began: a new
    document's at its start. Turns added to a document that has some go after them, in
    order, as ``show_turn`` adds them."""
    turns = tuple(turn(f"p{i}", "prompt" if i % 2 else "reply", f"text {i}") for i in range(60))
    thread = SideThread("t", "bob", 0, "", "open", 1, turns)
    places: list[int] = []
    insert = Array.insert

    def counted(array: Array[Any], index: int, item: Any) -> None:
        places.append(index)
        insert(array, index, item)

    monkeypatch.setattr(Array, "insert", counted)
    document = thread_document(thread)
    assert places == [0] * 60
    one_by_one = ThreadDocument()
    for t in turns:
        one_by_one.show_turn(t)
    assert shown(document) == shown(one_by_one)
    assert document.turn_ids() == [t["id"] for t in document.turns] == [t.id for t in turns]
    places.clear()
    more = (*turns, turn("p60", "prompt", "again?"), turn("p61", "reply", "yes"))
    show_all(document, replace(thread, turns=more))
    assert places == [60, 60]
    assert shown(document)[-2:] == [
        ("p60", "user", "done", "again?"),
        ("p61", "assistant", "done", "yes"),
    ]
    assert document.turn_ids() == [t["id"] for t in document.turns] == [t.id for t in more]


def test_a_long_streamed_reply_is_kept_in_blocks_and_reads_as_one_text() -> None:
    """Streamed text starts a new block every ``TEXT_BLOCK_UNITS`` (a deleted item between,
    so yrs does not merge an append into an ever longer block); the text reads whole."""
    thread = SideThread("t", "bob", 3, "title", "open", 1, (turn("p", "prompt", "q?", "running"),))
    document = thread_document(thread)
    document.start_reply("r", "fake", 6)
    before = _deleted_ranges(document.doc)
    piece = "word 😀 "  # 8 UTF-16 units
    pieces = 3 * TEXT_BLOCK_UNITS // 8 + 5
    for _ in range(pieces):
        document.append_text("r", piece)
    assert _deleted_ranges(document.doc) - before == 3
    assert shown(document)[-1][3] == piece * pieces
    document.show_turn(turn("r", "reply", piece * pieces + "end."))
    assert shown(document)[-1] == ("r", "assistant", "done", piece * pieces + "end.")


def _deleted_ranges(doc: Doc[Any]) -> int:
    deletes = delete_set_of(doc.get_update(), doc.get_state())
    return sum(len(ranges) for ranges in deletes.values())


def test_a_stored_text_going_on_from_a_non_ascii_stream_is_added_at_its_end() -> None:
    """pycrdt counts a text's length in UTF-8 bytes: the stored rest goes at that end, not
    at the streamed text's length in characters (inside it, before this was fixed)."""
    thread = SideThread("t", "bob", 3, "title", "open", 1, (turn("p", "prompt", "q?", "running"),))
    document = thread_document(thread)
    document.start_reply("r", "fake", 6)
    for piece in ["Café ", "😀 ", "naïve"]:
        document.append_text("r", piece)
    document.show_turn(turn("r", "reply", "Café 😀 naïve, done."))
    assert shown(document)[-1] == ("r", "assistant", "done", "Café 😀 naïve, done.")
