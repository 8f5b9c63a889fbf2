"""A session's room, its one door and its runner on the in-memory store and the fake model."""

from __future__ import annotations

from parley.session.lifecycle import PromptStatus
from tests.fake_model import FakeModel
from tests.server.runtime.harness import memory_session


async def test_a_prompt_is_answered_and_stored() -> None:
    async with memory_session({"ann": "editor"}, FakeModel(lambda sent: ["hel", "lo"])) as s:
        ack = await s.prompt("ann", "hi")
        assert ack["type"] == "ack"
        await s.settled(ack["prompt_id"])
        assert s.status(ack["prompt_id"]) is PromptStatus.DONE
        reply = s.room.doc.entry(ack["prompt_id"]).reply_id
        assert reply is not None and s.room.doc.entry(reply).content == "hello"
        stored = await s.store.entries_with_status("s", [PromptStatus.DONE.value])
        assert [row.id for row in stored] == [ack["prompt_id"]]
        kinds = [e.kind for e in await s.store.events_after("s", 0, 100)]
        assert kinds[-3:] == ["prompt_accepted", "run_started", "reply_completed"]
