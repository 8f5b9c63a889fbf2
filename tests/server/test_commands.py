"""The one door for commands (``server.runtime.commands.dispatch``) on a room over a real store,
with no socket: what the core decides is stored, answered once, and audited."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.server.runtime.commands import dispatch, handle_frame
from parley.server.runtime.room import SessionRoom
from parley.server.runtime.sent_commands import SentCommands
from parley.server.store import transaction
from parley.server.store.db import create_engine
from parley.server.store.rows import EntryRow
from parley.server.store.sessions import Store
from parley.server.store.tables import audit_log, webhook_deliveries
from parley.server.store.webhooks import create_webhook
from parley.session.commands import CancelCommand, MessageCommand, PromptCommand
from parley.session.errors import NotFound
from parley.session.queue import Policy
from parley.session.recent_acks import RecentAcks
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


def counted_reloads(room: SessionRoom, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One item for each time ``room`` reads its document again from the store."""
    reloads: list[int] = []
    load = room.writer.document.load

    async def counted_load() -> None:
        reloads.append(1)
        await load()

    monkeypatch.setattr(room.writer.document, "load", counted_load)
    return reloads


async def test_a_resent_command_is_found_before_the_document_changes(
    room: SessionRoom, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The room knows which command ids were stored: a resend is inserted on its own and
    refused there, with the document untouched (no reload, whatever its size); one the
    room did not know of (its hints read before another node wrote, say) is still refused
    by the store, at the cost of reading the document again."""
    first = await reply_of(room, "ann", PromptCommand("c1", "hello"))
    reloads = counted_reloads(room, monkeypatch)
    assert await reply_of(room, "ann", PromptCommand("c1", "hello")) == first
    assert reloads == []
    room.recent_acks = RecentAcks()  # the store's own answer, not the room's memory
    room.writer.sent = SentCommands(room.store, "s")
    await room.writer.sent.read(room.last_seq)
    room.writer.sent._hashes = set()  # knows of no command: every one looks new
    assert await reply_of(room, "ann", PromptCommand("c1", "hello")) == first
    assert [e.id for e in room.doc.entries()] == [first["prompt_id"]]
    assert room.last_seq == 1
    second = await reply_of(room, "ann", MessageCommand("m1", "and then"))
    assert second["seq"] == 2
    assert [e.seq for e in room.doc.entries()] == [1, 2]


async def test_a_room_loaded_again_knows_the_command_ids_stored_before(
    room: SessionRoom, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ids are read from the store at the first command of a loaded room (a restart,
    another node taking the session over): a resend from before is still refused before
    the document changes."""
    first = await reply_of(room, "ann", PromptCommand("c1", "hello"))
    again = SessionRoom("s", store=room.store, settings=room.settings)
    await again.load("t", Policy.QUEUE)
    reloads = counted_reloads(again, monkeypatch)
    assert await reply_of(again, "ann", PromptCommand("c1", "hello")) == first
    assert reloads == []
    assert (await reply_of(again, "ann", MessageCommand("m1", "next")))["seq"] == 2


async def test_any_command_resent_gets_its_first_answer_and_an_id_reused_is_a_conflict(
    room: SessionRoom,
) -> None:
    """Review (same answer everywhere, SDK resends): a cancel resent after its ack was lost
    was answered ``conflict`` (the prompt was no longer cancellable), though it had done
    what it asked. A resend gets its first ack; a cancel of a prompt already cancelled is
    already as asked (also for a room that forgot the first, after a restart); an id used
    again for something else is a conflict, on the room's memory and in the store."""
    asked = await reply_of(room, "ann", PromptCommand("c1", "hello"))
    cancel = CancelCommand("x1", asked["prompt_id"])
    first = await reply_of(room, "ann", cancel)
    assert first["type"] == "ack"
    assert await reply_of(room, "ann", cancel) == first
    again = await reply_of(room, "ann", CancelCommand("x2", asked["prompt_id"]))
    assert (again["type"], again["prompt_id"]) == ("ack", asked["prompt_id"])
    reused = await reply_of(room, "ann", MessageCommand("x1", "not a cancel"))
    assert (reused["type"], reused["code"]) == ("error", "conflict")
    other = await reply_of(room, "ann", PromptCommand("c1", "another text"))
    assert (other["type"], other["code"]) == ("error", "conflict")
    room.recent_acks = RecentAcks()  # as after a restart: the store decides
    forgot = await reply_of(room, "ann", PromptCommand("c1", "another text"))
    assert (forgot["type"], forgot["code"]) == ("error", "conflict")
    assert await reply_of(room, "ann", PromptCommand("c1", "hello")) == asked
    assert (await reply_of(room, "ann", cancel))["type"] == "ack"
    assert room.last_seq == 1


async def test_a_subscription_made_elsewhere_gets_the_next_acks_event_in_its_write(
    room: SessionRoom, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ack's write that this process knows no subscription wants runs alone on
    PostgreSQL (one statement, no transaction around it), guarded by the subscriptions'
    version: a subscription made since (by another node; here behind the process's back)
    makes it store nothing and go again in a transaction, with the delivery, so the two
    are kept or lost together."""
    first = await reply_of(room, "ann", PromptCommand("c1", "hello"))  # reads them: none
    async with room.store.transaction() as tx:
        await create_webhook(tx.connection, "https://x.test/h", ["prompt.accepted"], None, "k", 0)

    async def failing(*_: object) -> int:
        raise OperationalError("INSERT INTO webhook_deliveries", None, Exception("lost"))

    monkeypatch.setattr(transaction, "enqueue", failing)
    failed = await reply_of(room, "ann", PromptCommand("c2", "again"))
    assert (failed["type"], failed["code"]) == ("error", "unavailable")
    assert await room.store.entry_by_command("s", "ann", "c2") is None
    monkeypatch.undo()
    second = await reply_of(room, "ann", PromptCommand("c2", "again"))
    assert (first["seq"], second["seq"]) == (1, 2)
    async with room.store.read() as connection:
        told = (await connection.execute(select(webhook_deliveries.c.payload))).scalars().all()
    assert [json.loads(p)["data"]["seq"] for p in told] == [2]
    assert [e.seq for e in room.doc.entries()] == [1, 2]


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


async def test_writes_to_a_session_deleted_behind_the_rooms_back_are_not_found(
    room: SessionRoom,
) -> None:
    """Review (same answer everywhere): for a moment after a session was deleted on one
    node, another node still holding its room answered writes 500 (an audit record's
    foreign key) or 503 ("the database is unavailable", which tells a client to retry
    what never can succeed). They are ``not_found``, as every read already is."""
    assert (await reply_of(room, "ann", MessageCommand("m1", "before")))["type"] == "ack"
    assert await room.store.delete_session("s", 1)  # on another node, say
    for attempt in ("m2", "m3"):  # the failed write, then the room's read-back after it
        gone = await reply_of(room, "ann", MessageCommand(attempt, "after"))
        assert (gone["type"], gone["code"]) == ("error", "not_found"), gone
    with pytest.raises(NotFound):
        await room.writer.audit("as_user", "admin", {"action": "prompt as ann"})
