"""A room whose document writes its transcript as encoded updates (``session.yitems``, from
``ENCODE_FROM`` entries on: here from the first) sends, stores and reloads the same story as
pycrdt would: what a client holds, what the store holds and what the room reads agree, a
reply queued behind a message lands before it, and a reloaded room goes on writing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from parley.server.store.memory import MemoryStore
from parley.session import schema
from parley.session.lifecycle import PromptStatus
from tests.fake_model import FakeModel
from tests.server.runtime.harness import MemorySession, memory_session, stored_transcript

MEMBERS: dict[str, Any] = {"ann": "editor", "bob": "editor"}


@pytest.fixture(autouse=True)
def encode_from_the_first_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema, "ENCODE_FROM", 0)


def _plain(entries: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    return [(e["id"], e["kind"], e["status"], str(e["content"])) for e in entries]


def _read(s: MemorySession) -> list[tuple[str, str, str, str]]:
    return [(e.id, e.kind.value, e.status, e.content) for e in s.room.doc.entries()]


async def _agree(s: MemorySession) -> list[dict[str, Any]]:
    """The client's copy, the store's and the room's read of the transcript, all one."""
    held = s.watcher.transcript()
    assert held == await stored_transcript(s.store)
    assert _plain(held) == _read(s)
    return held


async def test_an_encoded_transcript_is_sent_stored_and_reloaded_as_written() -> None:
    store = MemoryStore()
    model = FakeModel(lambda sent: ["one ", "two é ", "three 😀"])
    model.gate = asyncio.Event()
    async with memory_session(MEMBERS, model, store=store) as s:
        first = (await s.prompt("ann", "[wait] first"))["prompt_id"]
        await s.until(lambda s: s.status(first) is PromptStatus.RUNNING)
        second = (await s.prompt("bob", "second"))["prompt_id"]
        note = (await s.message("ann", "a note while second waits"))["message_id"]
        model.gate.set()
        await s.settled(first, second)
        assert s.room.doc._settled  # the encoded path wrote them
        held = await _agree(s)
        order = [e["id"] for e in held]
        second_reply = next(e["id"] for e in held if e.get("reply_to") == second)
        # The reply goes directly after its prompt, before the message posted meanwhile.
        assert order.index(second_reply) == order.index(second) + 1 < order.index(note)
        assert all(e["status"] in {"done", "posted"} for e in held)
        assert {str(e["content"]) for e in held if e["kind"] == "reply"} == {"one two é three 😀"}
        before = _plain(held)

    async with memory_session(MEMBERS, model, store=store) as again:
        again.commands = s.commands  # command ids are the session's for good
        assert _plain(await stored_transcript(store)) == before
        third = (await again.prompt("bob", "third"))["prompt_id"]
        await again.message("bob", "after")
        fourth = (await again.prompt("ann", "fourth"))["prompt_id"]
        await again.settled(third, fourth)
        stored = await stored_transcript(store)
        assert _plain(stored)[: len(before)] == before
        assert _plain(stored) == _read(again)
        assert [e["kind"] for e in stored[len(before) :]] == [
            "prompt",
            "reply",
            "message",
            "prompt",
            "reply",
        ]
        # The reloaded room's first entry went through pycrdt; the ones after it encoded.
        assert again.room.doc._settled
