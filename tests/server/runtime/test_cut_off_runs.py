"""Runs cut off as they went, in a room on the in-memory store: a webhook call out when its
run (or a side-thread's) timed out, and a run cut off by a crash (the store as a dead node
left it, then a room loaded from it), whether a tool call was out or the reply was
streaming. What was done on the members' behalf is in the story and the audit log (review
H1)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.server.runtime.side_threads import ThreadSteps
from parley.server.store.access_rows import ToolRow
from parley.server.store.memory import MemoryStore
from parley.session.commands import CancelCommand
from parley.session.lifecycle import PromptStatus
from parley.session.thread_commands import ThreadCloseCommand
from parley.session.tokens import count_tokens
from tests.fake_model import Answer, FakeModel, Forever, Sent, call
from tests.server.runtime.harness import SESSION, MemorySession, memory_session, stored_transcript
from tests.server.runtime.test_side_threads import Gate, answered, ask, open_thread, watch


class HeldTool:
    """A webhook endpoint on 127.0.0.1 that takes each request and never answers it."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.arrived = asyncio.Event()
        self.url = ""
        self.connections: list[asyncio.StreamWriter] = []

    async def _take(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(writer)
        self.requests.append(await reader.read(65536))
        self.arrived.set()

    async def close(self) -> None:
        for writer in self.connections:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def row(self, timeout_ms: int = 20_000) -> ToolRow:
        return ToolRow(
            "deploy", "deploy", {"type": "object", "properties": {}}, self.url,
            "tool:deploy", "secret", timeout_ms, 0,
        )  # fmt: skip


@contextlib.asynccontextmanager
async def held_tool() -> AsyncIterator[HeldTool]:
    tool = HeldTool()
    server = await asyncio.start_server(tool._take, "127.0.0.1", 0)
    tool.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/deploy"
    async with server:
        try:
            yield tool
        finally:
            await tool.close()


def deploys(sent: Sent) -> Answer:
    if sent.messages[-1]["role"] == "user":
        return ["deploying ", call("deploy", {"where": "prod"})]
    return ["deployed"]


MEMBERS: dict[str, str | Member] = {"alice": Member("alice", "editor", frozenset({"tool:deploy"}))}
TOOLS = {"webhook_allow_private": True}  # the tool listens on loopback


def step_of(s: MemorySession, call_id: str) -> dict[str, Any]:
    return s.room.doc.entry(call_id).to_json()


async def audited(s: MemorySession, *kinds: str) -> list[Any]:
    return await s.store.access.list_audit(SESSION, limit=50, after=0, kinds=list(kinds))


async def call_out(s: MemorySession, tool: HeldTool) -> tuple[str, str]:
    """Alice's prompt, once its run's call of the tool went out: (prompt id, call id)."""
    asked = await s.prompt("alice", "deploy it")
    await asyncio.wait_for(tool.arrived.wait(), 10)
    [step] = [e for e in s.room.doc.entries() if e.kind == "tool"]
    assert step.status == "running"  # stored before the request went
    assert f'"call_id":"{step.id}"'.encode() in tool.requests[0]
    return asked["prompt_id"], step.id


async def test_a_call_out_when_its_run_times_out_ends_interrupted() -> None:
    async with held_tool() as tool:
        model = FakeModel(deploys, echo_tools=False)
        tools = [tool.row()]
        async with memory_session(MEMBERS, model, tools=tools, run_timeout_s=1, **TOOLS) as s:
            prompt_id, call_id = await call_out(s, tool)
            await s.settled(prompt_id)
            assert s.room.doc.entry(prompt_id).reason_code == "timeout"
            assert step_of(s, call_id)["status"] == "interrupted"
            [record] = await audited(s, "model_call")
            outcome = {"id": call_id, "tool": "deploy", "outcome": "interrupted"}
            assert record.data["tool_calls"] == [outcome]


async def test_a_call_out_when_the_node_died_ends_interrupted_as_the_session_loads() -> None:
    store = MemoryStore()
    async with held_tool() as tool:
        model = FakeModel(deploys, echo_tools=False)
        async with memory_session(MEMBERS, model, store=store, tools=[tool.row()], **TOOLS) as s:
            prompt_id, call_id = await call_out(s, tool)
        # The runner stopped with the call out, settling nothing: as a dead node leaves it.
        assert (await audited(s, "model_call")) == []
        async with memory_session(MEMBERS, FakeModel(), store=store, **TOOLS) as s:
            assert s.status(prompt_id) is PromptStatus.FAILED
            step = step_of(s, call_id)
            assert (step["status"], step["tool"]) == ("interrupted", "deploy")
            assert step["content"].startswith("alice ran deploy: interrupted\narguments: ")
            stored = {e["id"]: e for e in await stored_transcript(store)}
            assert stored[call_id]["status"] == "interrupted"
            [record] = await audited(s, "model_call")
            assert record.actor == "alice"
            assert record.data["reply_id"] == s.room.doc.entry(prompt_id).reply_id
            assert record.data["prompt_ids"] == [prompt_id]
            assert record.data["cut_off"] == "server_restart"
            outcome = {"id": call_id, "tool": "deploy", "outcome": "interrupted"}
            assert record.data["tool_calls"] == [outcome]
            [ended] = await audited(s, "run_ended")
            assert ended.data["reason_code"] == "server_restart"


async def test_a_reply_cut_off_mid_stream_by_a_crash_has_its_model_call_audited() -> None:
    store = MemoryStore()
    model = FakeModel(lambda sent: ["half an answer ", Forever()])
    async with memory_session(MEMBERS, model, store=store) as s:
        asked = await s.prompt("alice", "tell me")
        await s.until(MemorySession.streaming)
    async with memory_session(MEMBERS, FakeModel(), store=store) as s:
        reply = s.room.doc.entry(s.room.doc.entry(asked["prompt_id"]).reply_id or "")
        assert (reply.status, reply.content) == ("interrupted", "half an answer ")
        [record] = await audited(s, "model_call")
        assert record.data["reply_id"] == reply.id and record.data["tool_calls"] == []
        assert record.data["issuers"] == [{"user_id": "alice", "role": None}]
        # Once: a later load finds nothing running.
    async with memory_session(MEMBERS, FakeModel(), store=store) as s:
        assert len(await audited(s, "model_call")) == 1


async def test_a_side_thread_run_cut_off_by_a_crash_has_its_model_call_audited() -> None:
    """FX54: as a session run's (above), once, when the session is loaded again."""
    store, gate = MemoryStore(), Gate()
    model = FakeModel(lambda sent: ["half an answer ", gate, "never sent"])
    async with memory_session(MEMBERS, model, store=store) as s:
        thread_id = await open_thread(s, "alice")
        asked = await ask(s, "alice", thread_id, "tell me")
        await asyncio.wait_for(gate.entered.wait(), 10)  # the call went and is streaming
    assert (await audited(s, "model_call")) == []  # as a dead node leaves it
    async with memory_session(MEMBERS, FakeModel(), store=store) as s:
        [record] = await audited(s, "model_call")
        assert record.actor == "alice" and record.data["thread_id"] == thread_id
        assert record.data["prompt_ids"] == [asked["turn_id"]]
        assert record.data["reply_id"] == asked["reply_id"]
        assert record.data["cut_off"] == "server_restart"
        [ended] = await audited(s, "run_ended")
        assert ended.data["reason_code"] == "server_restart"
    async with memory_session(MEMBERS, FakeModel(), store=store) as s:
        assert len(await audited(s, "model_call")) == 1  # a later load finds nothing running
        assert len(s.store._read(SESSION).usage) == 1  # counted once


async def test_a_side_thread_run_nobody_watched_cut_off_by_a_crash_is_counted() -> None:
    """FX60, FX70: a side-thread run cut off so had ``tool_calls: null`` and was counted
    against no quota where its thread's document showed nothing of it (one node, nobody
    watching: its text and steps were not stored as they streamed). They are stored as
    they stream, watched or not: its tool calls are recorded as its document shows them,
    and it is counted as a session run cut off so is, its input as built again and the
    text it streamed out (estimated)."""
    store, gate = MemoryStore(), Gate()
    model = FakeModel(lambda sent: halts(sent, gate), echo_tools=False)
    async with memory_session(MEMBERS, model, store=store) as s:
        assert not s.room.settings.cluster
        thread_id = await open_thread(s, "alice")
        asked = await ask(s, "alice", thread_id, "search, then tell me")
        await asyncio.wait_for(gate.entered.wait(), 10)  # its text went out, stored first
        assert not s.room.sockets.thread_connections.get(thread_id)  # nobody watched
    async with memory_session(MEMBERS, FakeModel(), store=store) as s:
        [record] = await audited(s, "model_call")
        [searched] = record.data["tool_calls"]  # shown: the search it made
        assert (searched["tool"], searched["outcome"]) == ("search_documents", "done")
        [used] = s.store._read(SESSION).usage
        assert (used.user_id, used.reply_id, used.estimated) == ("alice", asked["reply_id"], True)
        assert used.output_tokens == count_tokens("half an answer ")
        assert used.input_tokens > count_tokens("search, then tell me")


async def test_a_side_thread_call_out_when_its_run_times_out_is_stored_interrupted() -> None:
    async with held_tool() as tool:
        model = FakeModel(deploys, echo_tools=False)
        tools = [tool.row()]
        async with memory_session(MEMBERS, model, tools=tools, run_timeout_s=1, **TOOLS) as s:
            thread_id = await open_thread(s, "alice")
            watch(s, "alice")
            assert (await ask(s, "alice", thread_id, "deploy it"))["type"] == "ack"
            await asyncio.wait_for(tool.arrived.wait(), 10)
            steps = s.room.side_threads.active[thread_id].steps
            assert isinstance(steps, ThreadSteps)
            [shown] = steps.tool_turns
            assert shown.status == "running"  # shown to the owner before the request went
            done = await answered(s, thread_id)
            [step] = [t for t in done.turns if t.kind == "tool"]
            assert (step.status, step.text.split("\n")[0]) == ("interrupted", "deploy: interrupted")
            [record] = await audited(s, "model_call")
            outcome = {"id": step.id, "tool": "deploy", "outcome": "interrupted"}
            assert record.data["tool_calls"] == [outcome]


def halts(sent: Sent, gate: Gate) -> Answer:
    """Searches first, then streams half an answer and waits on ``gate`` (review RA-3)."""
    if sent.messages[-1]["role"] == "user" and "search" in sent.asked_text():
        return [call("search_documents", {"query": "x"})]
    return ["half an answer ", gate, "never sent"]


async def cut_short_by(s: MemorySession, how: str, user_id: str, prompt_id: str) -> None:
    allow = Decision(True, "test")
    if how == "cancelled":
        assert (await s.send(user_id, CancelCommand(s.next_id(), prompt_id)))["type"] == "ack"
        return
    after = None if how == "member_removed" else Member(user_id, "viewer")
    await s.store.change_member(SESSION, user_id, after, 1, lambda *_: allow)
    await s.room.reload_settings()


@pytest.mark.parametrize("how", ["cancelled", "forbidden", "member_removed", "timeout"])
@pytest.mark.parametrize("text", ["tell me", "search, then tell me"])
async def test_a_model_call_cut_short_is_audited_once_with_why(how: str, text: str) -> None:
    gate = Gate()
    model = FakeModel(lambda sent: halts(sent, gate), echo_tools=False)
    timeout_s = 1 if how == "timeout" else 30
    members: dict[str, str | Member] = {"olga": "owner", "carl": "editor"}
    async with memory_session(members, model, run_timeout_s=timeout_s) as s:
        asked = await s.prompt("carl", text)
        await asyncio.wait_for(gate.entered.wait(), 10)  # the call went and is streaming
        if how != "timeout":
            await cut_short_by(s, how, "carl", asked["prompt_id"])
        await s.settled(asked["prompt_id"])
        assert s.room.doc.entry(asked["prompt_id"]).reason_code == how
        *whole, cut = await audited(s, "model_call")
        assert [r.data["cut_off"] for r in whole] == ([None] if "search" in text else [])
        assert [r.data["step"] for r in (*whole, cut)] == list(range(len(whole) + 1))
        assert cut.actor == "carl" and cut.data["cut_off"] == how
        assert cut.data["issuers"] == [{"user_id": "carl", "role": "editor"}]
        assert cut.data["tools_offered"] == ["search_documents"]
        assert cut.data["context_included"] and cut.data["ms"] is not None
        [ended] = await audited(s, "run_ended")
        assert ended.data["reason_code"] == how


@pytest.mark.parametrize("how", ["closed", "forbidden", "member_removed"])
async def test_a_side_thread_call_cut_short_is_audited_once_with_why(how: str) -> None:
    gate = Gate()
    model = FakeModel(lambda sent: halts(sent, gate), echo_tools=False)
    async with memory_session({"olga": "owner", "carl": "editor"}, model) as s:
        thread_id = await open_thread(s, "carl")
        watch(s, "carl")
        assert (await ask(s, "carl", thread_id, "search, then tell me"))["type"] == "ack"
        await asyncio.wait_for(gate.entered.wait(), 10)
        if how == "closed":
            closed = await s.send("carl", ThreadCloseCommand(s.next_id(), thread_id, delete=False))
            assert closed["type"] == "ack"
        else:
            await cut_short_by(s, how, "carl", "")
        await answered(s, thread_id)
        first, cut = await audited(s, "model_call")
        assert first.data["cut_off"] is None and first.data["thread_id"] == thread_id
        [ended] = await audited(s, "run_ended")
        assert cut.data["cut_off"] == ended.data["reason_code"] != "cut_short"
        assert (cut.data["thread_id"], cut.data["step"]) == (thread_id, 1)
