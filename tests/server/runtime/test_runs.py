"""Run control in one room on the in-memory store: time limits, the queue's order and
policies, cancel rights, queue limits (moved down from the socket tests)."""

from __future__ import annotations

from parley.session.commands import CancelCommand, PolicyCommand, PromptCommand
from parley.session.queue import Policy
from tests.fake_model import FakeModel, Forever
from tests.server.runtime.harness import MemorySession, memory_session


def endless() -> FakeModel:
    """A model that streams a word, then nothing until its stream is closed."""
    return FakeModel(lambda sent: ["word ", Forever()])


async def test_a_run_past_its_time_limit_fails_and_the_queue_moves_on() -> None:
    model = endless()
    async with memory_session({"alice": "editor"}, model, run_timeout_s=0.3) as s:
        acks = [await s.prompt("alice", text) for text in ("one", "two")]
        await s.settled(*(a["prompt_id"] for a in acks))
        entries = s.room.doc.entries()
        assert [e.status for e in entries] == ["failed"] * 4
        assert all(e.reason_code == "timeout" for e in entries)
        assert [r.closed_at is not None for r in model.requests] == [True, True]


def queued(s: MemorySession) -> list[tuple[str, int]]:
    return [(item.author, item.seq) for item in s.room.doc.queued()]


async def test_the_queue_root_shows_waiting_prompts_in_run_order() -> None:
    model = endless()
    members = {"alice": "editor", "bob": "editor", "olga": "owner"}
    async with memory_session(members, model) as s:
        first = await s.prompt("alice", "a1")
        await s.until(MemorySession.streaming)
        for text in ("a2", "a3"):
            await s.prompt("alice", text)
        await s.prompt("bob", "b1")
        # Round-robin: bob's first prompt runs before alice's third.
        assert queued(s) == [("alice", 2), ("bob", 4), ("alice", 3)]
        switched = await s.send("olga", PolicyCommand("s", Policy.COALESCE))
        assert switched == {"type": "ack", "id": "s", "seq": None, "policy": "coalesce"}
        assert [seq for _, seq in queued(s)] == [2, 3, 4]
        denied = await s.send("bob", PolicyCommand("s", Policy.REJECT))
        assert denied["code"] == "forbidden"
        await s.send("olga", CancelCommand("c", first["prompt_id"]))
        # Coalesce: the three waiting prompts are answered by one run.
        await s.until(
            lambda s: any(len(e.answers) == 3 and e.content for e in s.room.doc.entries())
        )
        assert len(model.requests) == 2
        second = model.requests[1]
        assert second.issuers == ("alice", "bob")
        answered = [m["content"] for m in second.asked]
        assert answered == ["[alice asks you]\na2", "[alice asks you]\na3", "[bob asks you]\nb1"]
        assert s.room.doc.queued() == [] and s.room.doc.meta["policy"] == "coalesce"
        a2 = next(e.id for e in s.room.doc.entries() if e.content == "a2")
        # An editor may not cancel a run that also answers someone else; an owner may.
        refused = await s.send("alice", CancelCommand("c", a2))
        assert refused["code"] == "forbidden"
        await s.send("olga", CancelCommand("c2", a2))
        await s.settled(*(e.id for e in s.room.doc.entries() if e.kind == "prompt"))
        assert s.statuses() == dict.fromkeys(("a1", "a2", "a3", "b1"), "cancelled")


async def test_reject_names_the_running_prompt() -> None:
    members = {"alice": "editor", "bob": "editor"}
    async with memory_session(members, endless(), policy=Policy.REJECT) as s:
        first = await s.send("alice", PromptCommand("1", "long"))
        await s.until(MemorySession.streaming)
        busy = await s.send("bob", PromptCommand("1", "me too"))
        assert busy["type"] == "error" and busy["code"] == "busy"
        assert first["prompt_id"] in busy["message"] and "alice" in busy["message"]
        # Resending an accepted prompt while busy still returns its ack.
        assert await s.send("alice", PromptCommand("1", "long")) == first
        await s.send("alice", CancelCommand("c", first["prompt_id"]))
        await s.settled(first["prompt_id"])
        ok = await s.send("bob", PromptCommand("2", "now?"))
        assert ok["type"] == "ack" and ok["seq"] == 2


async def test_queue_limits_refuse_with_queue_full_and_store_nothing() -> None:
    members = {"alice": "editor", "bob": "editor"}
    limits = {"max_pending_per_user": 2, "max_pending_per_session": 3}
    async with memory_session(members, endless(), **limits) as s:
        await s.prompt("alice", "runs")
        await s.until(MemorySession.streaming)
        replies = [await s.prompt("alice", "x") for _ in range(3)]
        assert [r["type"] for r in replies] == ["ack", "ack", "error"]
        assert replies[2]["code"] == "queue_full" and "limit 2" in replies[2]["message"]
        assert (await s.prompt("bob", "x"))["type"] == "ack"
        full = await s.prompt("bob", "x")
        assert full["code"] == "queue_full" and "limit 3" in full["message"]
        stored = await s.store.entries_with_status("s", ["queued", "running"])
        assert [row.seq for row in stored] == [1, 2, 3, 4]  # refused prompts took no number
