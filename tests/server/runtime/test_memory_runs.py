"""A session's room, its one door and its runner on the in-memory store and the fake model."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from parley.server.store.memory import MemoryStore
from parley.server.store.memory_tables import MemoryTx
from parley.session.errors import Unavailable
from parley.session.lifecycle import PromptStatus
from parley.session.quota import Quotas, day_of
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


async def test_a_run_reads_its_quotas_once_before_its_model_call_and_stores_its_usage_as_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The quotas are read once, under the writer, before the model call (which begins
    before the run's start is stored: ``RunSteps.start``); the usage is written in the
    run's finish (the prompt's row becomes ``running``, then ``done``)."""
    done: list[tuple[MemoryTx, str]] = []

    def logged(name: str) -> None:
        method = getattr(MemoryTx, name)

        async def wrapper(tx: MemoryTx, *args: Any, **kwargs: Any) -> Any:
            what = f"{name}:{args[1].value}" if name == "set_entry_status" else name
            done.append((tx, what))
            return await method(tx, *args, **kwargs)

        monkeypatch.setattr(MemoryTx, name, wrapper)

    for name in ("quotas", "insert_usage", "set_entry_status"):
        logged(name)
    reads: list[str] = []
    read = MemoryStore.quotas

    async def counted(store: MemoryStore, session_id: str) -> Quotas:
        reads.append(session_id)
        return await read(store, session_id)

    monkeypatch.setattr(MemoryStore, "quotas", counted)
    async with memory_session({"ann": "editor"}, FakeModel(lambda sent: ["hi"])) as s:
        ack = await s.prompt("ann", "hi")
        await s.settled(ack["prompt_id"])
        txs = {what: tx for tx, what in done}
        assert "quotas" not in txs
        assert txs["insert_usage"] is txs["set_entry_status:done"]
        assert reads == ["s"]
        used = await s.store.usage_by_user("s", day_of(s.room.clock()))
        assert [u.user_id for u in used] == ["ann"]


async def test_the_model_is_called_while_the_start_is_stored_and_its_text_waits_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model call begins while the run's start is being stored; nothing of its
    answer is shown before the start is committed."""
    holding, release, called = asyncio.Event(), asyncio.Event(), asyncio.Event()
    original = MemoryTx.set_entry_status

    async def held(tx: MemoryTx, entry_id: str, status: PromptStatus, **kwargs: Any) -> None:
        if status is PromptStatus.RUNNING:
            holding.set()
            await release.wait()
        await original(tx, entry_id, status, **kwargs)

    async def note_call() -> None:
        called.set()

    monkeypatch.setattr(MemoryTx, "set_entry_status", held)
    async with memory_session({"ann": "editor"}, FakeModel(lambda sent: [note_call, "hi"])) as s:
        ack = await s.prompt("ann", "hi")
        async with asyncio.timeout(10):
            await holding.wait()
            await called.wait()
        shown = s.watcher.transcript()
        assert [e["kind"] for e in shown] == ["prompt"]
        assert shown[0]["status"] == PromptStatus.QUEUED.value
        release.set()
        await s.settled(ack["prompt_id"])
        replies = [e for e in s.watcher.transcript() if e["kind"] == "reply"]
        assert [r["content"] for r in replies] == ["hi"]


async def test_a_model_call_begun_for_a_start_that_was_not_stored_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run's start fails to store after its model call began: the call is ended and
    nothing of it is kept; the prompt waits, and the run after the retry answers it once."""
    failed: list[str] = []
    original = MemoryTx.set_entry_status

    async def failing(tx: MemoryTx, entry_id: str, status: PromptStatus, **kwargs: Any) -> None:
        if status is PromptStatus.RUNNING and not failed:
            failed.append(entry_id)
            await asyncio.sleep(0)  # the call's task runs up to the model's request
            raise Unavailable("the database is unavailable; nothing was stored")
        await original(tx, entry_id, status, **kwargs)

    fake: FakeModel = FakeModel(lambda sent: [f"answer {len(fake.requests)}"])
    monkeypatch.setattr(MemoryTx, "set_entry_status", failing)
    async with memory_session({"ann": "editor"}, fake) as s:
        ack = await s.prompt("ann", "hi")
        await s.settled(ack["prompt_id"], timeout_s=20)
        assert failed == [ack["prompt_id"]]
        assert s.status(ack["prompt_id"]) is PromptStatus.DONE
        replies = [e for e in s.watcher.transcript() if e["kind"] == "reply"]
        assert [r["content"] for r in replies] == [f"answer {len(fake.requests)}"]
        kinds = [e.kind for e in await s.store.events_after("s", 0, 100)]
        assert kinds.count("run_started") == 1
