"""A session's room, its one door and its runner on the in-memory store and the fake model."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from parley.server.store.memory import MemoryStore
from parley.server.store.memory_tables import MemoryTx
from parley.session.commands import CancelCommand
from parley.session.lifecycle import PromptStatus
from parley.session.quota import Quotas, day_of
from parley.session.tokens import count_tokens
from tests.fake_model import FakeModel, Forever, Sent, Step, call
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


async def test_a_run_starts_on_the_rooms_quotas_and_stores_its_usage_as_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No read and no transaction of their own: the quotas are the room's, read as it
    loaded (and when the admin API changes them), the usage is written in the run's
    finish (with the prompt's row becoming ``done``)."""
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
        assert reads == ["s"] and s.room.quotas == Quotas()  # as the room loaded
        ack = await s.prompt("ann", "hi")
        await s.settled(ack["prompt_id"])
        txs = {what: tx for tx, what in done}
        assert "quotas" not in txs and reads == ["s"]
        assert txs["insert_usage"] is txs["set_entry_status:done"]
        used = await s.store.usage_by_user("s", day_of(s.room.clock()))
        assert [u.user_id for u in used] == ["ann"]


async def _used(s: Any) -> tuple[int, int]:
    [row] = await s.store.usage_by_user("s", day_of(s.room.clock()))
    return row.input_tokens, row.output_tokens


async def test_a_run_cancelled_mid_stream_is_charged_what_it_streamed() -> None:
    """The provider reports usage only at a stream's end, so a member who cancelled every
    prompt of theirs just before its end was never charged: the quotas held nobody. A call
    cut short now counts its request in and its text out (estimated)."""
    streaming = asyncio.Event()

    async def mid_stream() -> None:
        streaming.set()
        await asyncio.Event().wait()

    text = "word " * 40
    model = FakeModel(lambda sent: [text, mid_stream])
    async with memory_session({"ann": "editor"}, model) as s:
        ack = await s.prompt("ann", "tell me everything " * 20)
        async with asyncio.timeout(10):
            await streaming.wait()
        await s.until(lambda s: s.streaming())
        await s.send("ann", CancelCommand(s.next_id(), ack["prompt_id"]))
        await s.settled(ack["prompt_id"])
        assert s.status(ack["prompt_id"]) is PromptStatus.CANCELLED
        spent_in, spent_out = await _used(s)
        assert spent_out == count_tokens(text)
        assert spent_in >= count_tokens("tell me everything " * 20)


async def test_a_run_stopped_in_its_second_call_is_charged_for_both() -> None:
    """A tool loop's first call reported its usage; the run stopped during the second:
    the first call's usage was lost with it."""
    second = asyncio.Event()

    async def noted() -> None:
        second.set()

    def script(sent: Sent) -> list[Step]:
        if sent.messages[-1]["role"] == "tool":  # the refused tool's result, answered
            return ["so ", noted, Forever()]
        return [call("not_offered", {"x": 1})]

    model = FakeModel(script, echo_tools=False)
    async with memory_session({"ann": "editor"}, model) as s:
        ack = await s.prompt("ann", "go")
        async with asyncio.timeout(10):
            await second.wait()
        await s.send("ann", CancelCommand(s.next_id(), ack["prompt_id"]))
        await s.settled(ack["prompt_id"])
        spent_in, spent_out = await _used(s)
        assert spent_in > 100 and spent_out > 10  # the first call's (100, 10), and more
