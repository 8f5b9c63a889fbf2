"""Run control on a room over the real SQLite and PostgreSQL store: cancelling stops the
model call before the cancel is acknowledged; a policy set through the REST handlers. The
rules of runs (time limits, queue order, policies, limits) are tested on a room over the
in-memory store: ``tests/server/runtime/test_runs.py``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from parley.server.http import sessions as sessions_api
from parley.server.http.models import SessionCreate, SessionPatch
from parley.server.http.rest import ADMIN
from parley.session.commands import CancelCommand, PromptCommand
from parley.session.errors import InvalidInput
from tests.conftest import sqlite_url
from tests.fake_model import FakeModel, repeating
from tests.server.runtime.backend import backend, rest_body, sql_store
from tests.server.runtime.harness import MemorySession, memory_session, memory_settings


def endless() -> FakeModel:
    """A model that streams a word every 20 ms until its stream is closed."""
    return FakeModel(lambda sent: repeating(lambda: asyncio.sleep(0.02), "word "))


def streaming(s: MemorySession) -> bool:
    return any(
        e.kind == "reply" and e.status == "streaming" and len(e.content) > 20
        for e in s.room.doc.entries()
    )


async def test_cancel_closes_the_model_stream_quickly(database_url: str) -> None:
    model = endless()
    async with (
        sql_store(database_url) as store,
        memory_session({"alice": "editor"}, model, store=store) as s,
    ):
        ack = await s.send("alice", PromptCommand("p", "go on forever"))
        await s.until(streaming)
        sent = time.monotonic()
        cancelled = await s.send("alice", CancelCommand("c", ack["prompt_id"]))
        assert cancelled["type"] == "ack"
        closed_at = model.requests[0].closed_at
        assert closed_at is not None, "the model's stream was closed"
        print(f"\ncancel to upstream close: {(closed_at - sent) * 1000:.1f} ms")
        await s.settled(ack["prompt_id"])
        prompt, reply = s.room.doc.entries()
        assert prompt.status == "cancelled" and reply.status == "cancelled"
        assert reply.content.startswith("word")  # the partial reply is kept
        (stored,) = await store.entries_with_status("s", ["cancelled"])
        assert stored.id == prompt.id


async def test_policy_over_rest(tmp_path: Path) -> None:
    async with (
        sql_store(sqlite_url(tmp_path)) as store,
        backend(memory_settings(), store=store, model=FakeModel()) as b,
    ):
        state = b.state
        created = await sessions_api.create_session(state, SessionCreate(policy="reject"))
        assert created.policy == "reject"
        sid = created.id
        patched = await sessions_api.update_session(
            state, sid, SessionPatch(policy="interrupt"), ADMIN
        )
        assert patched.policy == "interrupt"
        with pytest.raises(InvalidInput) as bad:
            await sessions_api.update_session(
                state, sid, rest_body(SessionPatch, policy="random"), ADMIN
            )
        assert bad.value.http_status == 422
        assert (await sessions_api.get_session(state, sid)).policy == "interrupt"
        assert (await b.rooms.get(sid)).queue.policy.value == "interrupt"  # in force
