"""What a model says enters the server storable (review I2-3): a NUL or a lone surrogate in
its streamed text or a tool call's arguments is replaced by U+FFFD, so the run ends as it
would and the transcript still reads, on SQLite and PostgreSQL (which stores no NUL)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import postgres_database, sqlite_url
from tests.fake_model import Answer, FakeModel, Sent, Status, call
from tests.server.runtime.backend import backend, sql_store
from tests.server.runtime.harness import memory_settings


@contextlib.asynccontextmanager
async def database(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield sqlite_url(tmp_path)
    else:
        async with postgres_database(migrated=True) as url:
            yield url


def script(sent: Sent) -> Answer:  # after the tool's result: the fake model echoes it
    return ["col1\u0000col2 ", "and \ud800 ", call("search_documents", '{"query": "a\x00b"}')]


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_a_reply_holding_a_nul_or_a_lone_surrogate_is_stored_replaced(
    kind: str, tmp_path: Path
) -> None:
    model = FakeModel(script)
    async with (
        database(kind, tmp_path) as url,
        sql_store(url) as store,
        backend(memory_settings(), store=store, model=model) as b,
    ):
        sid = await b.new_session({"alice": "editor", "bob": "viewer"})
        s = await b.session(sid)
        asked = await s.prompt("alice", "look it up")
        await s.settled(asked["prompt_id"])
        entries = {e.kind: e for e in s.room.doc.entries()}
        assert entries["reply"].status == "done" and entries["prompt"].status == "done"
        read = await b.request("GET", f"/api/v1/sessions/{sid}/transcript")
        assert read.status_code == 200, read.text
        shown = {e["kind"]: e for e in read.json()["messages"]}
        assert shown["reply"]["content"].startswith("col1\ufffdcol2 and \ufffd The tool said:")
        assert '"query": "a\ufffdb"' in shown["tool"]["content"]
        bob = await b.token(sid, "bob")
        context = await b.request("GET", f"/api/v1/sessions/{sid}/context?user_id=bob", token=bob)
        assert context.status_code == 200, context.text


async def test_a_model_error_holding_a_nul_is_told_replaced(tmp_path: Path) -> None:
    """The upstream's error message is the prompt's stored reason: the same holds."""
    model = FakeModel(lambda sent: Status(400, "bad\u0000request \ud800"))
    [prompt] = [e for e in await _answered(model, tmp_path) if e["kind"] == "prompt"]
    assert prompt["reason_code"] == "provider_error"
    assert "bad\ufffdrequest \ufffd" in prompt["reason"]


async def test_an_emoji_whose_halves_come_in_two_pieces_is_stored_whole(tmp_path: Path) -> None:
    """A proxy slicing JavaScript strings sends a surrogate pair's halves in two deltas
    (review RV37 F3: each was stored as U+FFFD); a half with no partner still is."""
    pieces = ["go 😀 then ", "\ud83d", "\ude00 split, ", "a\ud83d", "\ude4b\U0001f3fd end \ud83d"]
    [reply] = [
        e for e in await _answered(FakeModel(lambda sent: pieces), tmp_path) if e["kind"] == "reply"
    ]
    assert reply["content"] == "go 😀 then 😀 split, a🙋🏽 end \ufffd"
    assert reply["status"] == "done"


async def _answered(model: FakeModel, tmp_path: Path) -> list[dict[str, Any]]:
    """The transcript, as REST reads it, of a session whose one prompt ``model`` answered."""
    async with (
        sql_store(sqlite_url(tmp_path)) as store,
        backend(memory_settings(), store=store, model=model) as b,
    ):
        sid = await b.new_session({"alice": "editor"})
        s = await b.session(sid)
        asked = await s.prompt("alice", "hello")
        await s.settled(asked["prompt_id"])
        read = await b.request("GET", f"/api/v1/sessions/{sid}/transcript")
        assert read.status_code == 200, read.text
        messages: list[dict[str, Any]] = read.json()["messages"]
        return messages
