"""The one door for commands (``server.runtime.commands.dispatch``) on a room over a real store,
with no socket: what the core decides is stored, answered once, and audited."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.server.runtime.commands import dispatch, handle_frame
from parley.server.runtime.room import SessionRoom
from parley.server.store.db import create_engine
from parley.server.store.rows import EntryRow
from parley.server.store.sessions import Store
from parley.server.store.tables import audit_log
from parley.session.commands import CancelCommand, MessageCommand, PromptCommand
from parley.session.queue import Policy
from tests.conftest import make_settings


@pytest.fixture
async def room(database_url: str, tmp_path: Path) -> AsyncIterator[SessionRoom]:
    store = Store(create_engine(database_url))
    try:
        await store.create_session("s", "t", Policy.QUEUE.value, 0)
        for user_id, role in (("ann", "editor"), ("vic", "viewer")):
            await store.change_member(
                "s", user_id, Member(user_id, role), 0, lambda *_: Decision(True, "test")
            )
        settings = make_settings(database_url, tmp_path, max_pending_per_user=2)
        room = SessionRoom("s", store=store, settings=settings)
        await room.load("t", Policy.QUEUE)
        yield room
    finally:
        await store.close()


async def reply_of(room: SessionRoom, actor: str, command: Any) -> dict[str, Any]:
    return dict(json.loads(await dispatch(room, actor, command)))


async def audit_kinds(room: SessionRoom) -> list[tuple[str, str]]:
    async with room.store.read() as connection:
        rows = await connection.execute(select(audit_log.c.kind, audit_log.c.actor))
        return [(row.kind, row.actor) for row in rows]


async def test_a_prompt_is_stored_once_and_a_resent_one_gets_its_first_ack(
    room: SessionRoom,
) -> None:
    first = await reply_of(room, "ann", PromptCommand("c1", "hello"))
    assert first["type"] == "ack" and first["seq"] == 1
    assert room.doc.entry(first["prompt_id"]).content == "hello"
    assert [p.id for p in room.queue.pending()] == [first["prompt_id"]]
    assert await reply_of(room, "ann", PromptCommand("c1", "hello")) == first
    await reply_of(room, "ann", PromptCommand("c2", "again"))
    # The queue is full for ann now; a resent prompt is still answered with its ack.
    assert await reply_of(room, "ann", PromptCommand("c1", "hello")) == first
    full = await reply_of(room, "ann", PromptCommand("c3", "more"))
    assert (full["type"], full["code"], full["id"]) == ("error", "queue_full", "c3")
    assert room.last_seq == 2


async def test_a_refusal_is_answered_audited_and_stores_nothing(room: SessionRoom) -> None:
    refused = await reply_of(room, "vic", PromptCommand("c1", "hello"))
    assert (refused["type"], refused["code"]) == ("error", "forbidden")
    assert await audit_kinds(room) == [("refused", "vic")]
    assert room.doc.entries() == [] and room.last_seq == 0
    unknown = await reply_of(room, "ann", CancelCommand("c2", "nope"))
    assert unknown["code"] == "not_found"


async def test_a_frame_and_a_typed_command_take_the_same_door(room: SessionRoom) -> None:
    frame = json.dumps({"type": "message", "id": "m1", "text": "hi"})
    message = json.loads(await handle_frame(room, "ann", frame))
    assert (message["type"], message["seq"]) == ("ack", 1)
    bad = json.loads(await handle_frame(room, "ann", "{"))
    assert (bad["type"], bad["code"]) == ("error", "invalid")


async def test_a_sequence_number_moved_behind_the_rooms_back_is_followed(
    room: SessionRoom,
) -> None:
    assert (await reply_of(room, "ann", MessageCommand("m1", "one")))["seq"] == 1
    async with room.store.transaction() as tx:
        tx.claim_seq("s", 2)  # not through the room: 2 is taken
        await tx.append_events("s", 0, [])
    moved = await reply_of(room, "ann", MessageCommand("m2", "two"))
    assert (moved["type"], moved["code"]) == ("error", "unavailable")
    assert (await reply_of(room, "ann", MessageCommand("m2", "two")))["seq"] == 3
    assert [e.seq for e in room.doc.entries()] == [1, 3]


async def test_a_sequence_number_taken_by_a_row_behind_the_rooms_back_is_followed(
    room: SessionRoom,
) -> None:
    """The entry's insert finds its number taken (the store's count moved with it): the
    member is asked to send again, never cut off, and the room counts on from the store."""
    assert (await reply_of(room, "ann", MessageCommand("m1", "one")))["seq"] == 1
    async with room.store.transaction() as tx:  # not through the room: 2 is taken
        tx.claim_seq("s", 2)
        await tx.insert_entry(
            EntryRow("x2", "s", 2, "message", "bob", "b1", "hi", "done", None, None, 0)
        )
        await tx.append_events("s", 0, [])
    moved = await reply_of(room, "ann", MessageCommand("m2", "two"))
    assert (moved["type"], moved["code"]) == ("error", "unavailable")
    assert (await reply_of(room, "ann", MessageCommand("m2", "two")))["seq"] == 3
