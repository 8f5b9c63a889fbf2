"""Semantic events of a room on the in-memory store: each change yields its events, in
commit order, stored with the change. (The events route and both databases:
``tests/server/test_events.py``.)"""

from __future__ import annotations

import asyncio
from typing import Any

from parley.session.commands import CancelCommand, FactCommand, PinCommand, PolicyCommand
from parley.session.lifecycle import PromptStatus
from parley.session.queue import Policy
from tests.server.runtime.harness import SESSION, MemorySession, memory_session
from tests.server.test_context_api import first_call_waits


async def events_of(s: MemorySession) -> list[Any]:
    """The session's events after the members joined, numbered without a gap."""
    events = await s.store.events_after(SESSION, 0, 1000)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    return [e for e in events if e.kind != "member_joined"]


def kinds(events: list[Any]) -> list[str]:
    return [e.kind for e in events]


async def running(s: MemorySession, prompt_id: str) -> None:
    await s.until(lambda s: s.status(prompt_id) is PromptStatus.RUNNING)


async def test_a_cancelled_waiting_prompt_fails_with_its_code_and_a_full_queue_adds_nothing() -> (
    None
):
    gate = asyncio.Event()  # the first model call waits for it
    model = first_call_waits(gate)
    async with memory_session({"alice": "editor"}, model, max_pending_per_user=1) as s:
        first = await s.prompt("alice", "first")
        await running(s, first["prompt_id"])
        second = await s.prompt("alice", "second")
        full = await s.prompt("alice", "third")
        assert full["type"] == "error", full
        cancelled = await s.send("alice", CancelCommand("x", second["prompt_id"]))
        assert cancelled["type"] == "ack", cancelled
        gate.set()
        await s.settled(first["prompt_id"], second["prompt_id"])

        events = await events_of(s)
        assert kinds(events) == [
            "prompt_accepted",
            "run_started",
            "prompt_accepted",
            "run_failed",
            "reply_completed",
        ]
        failed = events[3].data
        assert failed["prompt_ids"] == [second["prompt_id"]]
        assert failed["reply_id"] is None
        assert failed["reason_code"] == "cancelled"
        assert failed["reason"] == "cancelled by alice"
        assert events[4].data["prompt_ids"] == [first["prompt_id"]]
        assert "third" not in str(events)


async def test_a_stopped_run_fails_with_its_reply_and_code() -> None:
    gate = asyncio.Event()  # the first model call waits for it
    async with memory_session({"alice": "editor"}, first_call_waits(gate)) as s:
        ack = await s.prompt("alice", "first")
        await running(s, ack["prompt_id"])
        await s.send("alice", CancelCommand("x", ack["prompt_id"]))
        await s.settled(ack["prompt_id"])
        events = await events_of(s)
        assert kinds(events) == ["prompt_accepted", "run_started", "run_failed"]
        reply_id = events[1].data["reply_id"]
        assert events[2].data == {
            "prompt_ids": [ack["prompt_id"]],
            "reply_id": reply_id,
            "reason_code": "cancelled",
            "reason": "cancelled by alice",
            "retry_at": None,
        }


async def test_a_superseded_run_and_the_commands_that_changed_the_session() -> None:
    gate = asyncio.Event()  # the first model call waits for it
    async with memory_session({"olga": "owner"}, first_call_waits(gate)) as s:
        first = await s.prompt("olga", "first")
        await running(s, first["prompt_id"])
        policy = await s.send("olga", PolicyCommand("s", Policy.INTERRUPT))
        assert policy["type"] == "ack", policy
        second = await s.prompt("olga", "second")
        gate.set()
        await s.settled(first["prompt_id"], second["prompt_id"])
        pin = await s.send("olga", PinCommand("n", second["prompt_id"], True))
        assert pin["type"] == "ack", pin
        fact = await s.send("olga", FactCommand("f", "tier", "gold"))
        assert fact["type"] == "ack", fact

        events = await events_of(s)
        assert kinds(events) == [
            "prompt_accepted",
            "run_started",
            "settings_changed",
            "prompt_accepted",
            "run_failed",
            "run_started",
            "reply_completed",
            "pin_changed",
            "fact_set",
        ]
        first_reply = events[1].data["reply_id"]
        assert events[2].data == {"changed": {"policy": "interrupt"}, "by": "olga"}
        failed = events[4].data
        assert (failed["prompt_ids"], failed["reply_id"], failed["reason_code"]) == (
            [first["prompt_id"]],
            first_reply,
            "superseded",
        )
        assert events[5].data["prompt_ids"] == [second["prompt_id"]]
        assert [e.actor for e in events[7:]] == ["olga", "olga"]
        assert events[7].data == {"entry_id": second["prompt_id"], "pinned": True, "by": "olga"}
        assert events[8].data == {"key": "tier", "removed": False, "by": "olga"}
