"""A side-thread's document with no I/O: built from the stored thread, brought to each
stored turn (tool steps before the reply being written, streamed text kept or corrected),
and a client's copy of another document told apart."""

from __future__ import annotations

from typing import Any

from pycrdt import Doc, write_var_uint

from parley.authz.policy import Readers
from parley.session.core import SideThread, ThreadTurn
from parley.session.core.thread_doc import ThreadDocument, thread_document


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
