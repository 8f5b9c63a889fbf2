"""A room over a real store, with no socket and no model: a run's steps, a member's
removal and a restart, as the session core decides them, reach the rows, the document
and the semantic events alike -- and the database's status column obeys the lifecycle
table as the document does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.server.runtime.commands import dispatch
from parley.server.runtime.room import SessionRoom
from parley.server.settings import Settings
from parley.server.store.db import create_engine
from parley.server.store.sessions import Store
from parley.session.commands import PromptCommand
from parley.session.lifecycle import IllegalTransition, PromptStatus
from parley.session.queue import Policy
from parley.session.reasons import Ending, ReasonCode
from tests.conftest import entry_columns, make_settings


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store(create_engine(database_url))
    try:
        await store.create_session("s", "t", Policy.QUEUE.value, 0)
        for user_id in ("ann", "bob"):
            await store.change_member(
                "s", user_id, Member(user_id, "editor"), 0, lambda *_: Decision(True, "test")
            )
        yield store
    finally:
        await store.close()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path)


async def loaded(store: Store, settings: Settings) -> SessionRoom:
    room = SessionRoom("s", store=store, settings=settings)
    await room.load("t", Policy.QUEUE)
    return room


async def prompt(room: SessionRoom, actor: str, command_id: str) -> str:
    reply = await dispatch(room, actor, PromptCommand(command_id, "hello"))
    assert '"ack"' in reply, reply
    return str(room.doc.entries()[-1].id)


async def row_of(store: Store, entry_id: str) -> tuple[Any, ...]:
    return await entry_columns(store, entry_id, "status", "reason_code", "reply_id")


async def event_kinds(store: Store) -> list[str]:
    return [e.kind for e in await store.events_after("s", 0, 100)]


async def test_a_run_starts_streams_and_ends_with_its_reason_in_rows_document_and_events(
    store: Store, settings: Settings
) -> None:
    room = await loaded(store, settings)
    first = await prompt(room, "ann", "c1")
    active = await room.runs.start("model-x")
    assert active is not None and active.run.ids == (first,)
    assert room.active_run is active
    assert await row_of(store, first) == ("running", None, active.reply_id)
    await room.runs.append_reply(active, "partial")
    assert room.doc.entry(active.reply_id).content == "partial"
    ending = Ending(ReasonCode.TIMEOUT, "no answer within 1 s")
    await room.runs.finish(active, ending)
    room.runs.end(active)
    assert await row_of(store, first) == ("failed", "timeout", active.reply_id)
    assert room.doc.entry(first).status == "failed"
    assert room.doc.entry(active.reply_id).status == "failed"
    assert room.active_run is None and room.queue.running is None
    kinds = await event_kinds(store)
    assert kinds[-3:] == ["prompt_accepted", "run_started", "run_failed"]


async def test_the_status_column_refuses_what_the_lifecycle_table_forbids(
    store: Store, settings: Settings
) -> None:
    room = await loaded(store, settings)
    first = await prompt(room, "ann", "c1")
    active = await room.runs.start("m")
    assert active is not None
    await room.runs.finish(active, None)
    room.runs.end(active)
    assert await row_of(store, first) == ("done", None, active.reply_id)
    # A run settled twice (a bug): the row refuses to leave ``done``, nothing is kept.
    with pytest.raises(IllegalTransition):
        await room.runs.finish(active, Ending(ReasonCode.CANCELLED, "late"))
    assert await row_of(store, first) == ("done", None, active.reply_id)
    assert room.doc.entry(first).status == PromptStatus.DONE.value
    assert (await event_kinds(store)).count("reply_completed") == 1


async def test_a_removed_members_waiting_prompt_fails_and_their_running_one_is_stopped(
    store: Store, settings: Settings
) -> None:
    room = await loaded(store, settings)
    running = await prompt(room, "bob", "c1")
    waiting = await prompt(room, "bob", "c2")
    kept = await prompt(room, "ann", "c3")
    active = await room.runs.start("m")
    assert active is not None and active.run.ids == (running,)
    await room.membership.set_member("bob", None)
    assert active.stopped is not None and active.stopped.code is ReasonCode.MEMBER_REMOVED
    assert await row_of(store, waiting) == ("failed", "member_removed", None)
    assert [p.id for p in room.queue.pending()] == [kept]
    await room.runs.finish(active, active.stopped)  # as the runner does once stopped
    assert await row_of(store, running) == ("failed", "member_removed", active.reply_id)


async def test_a_restart_cuts_off_the_running_prompt_and_requeues_the_waiting_one(
    store: Store, settings: Settings
) -> None:
    before = await loaded(store, settings)
    running = await prompt(before, "ann", "c1")
    waiting = await prompt(before, "bob", "c2")
    active = await before.runs.start("m")
    assert active is not None
    # The process dies here; a new one loads the session from the store.
    after = await loaded(store, settings)
    assert await row_of(store, running) == ("failed", "server_restart", active.reply_id)
    assert after.doc.entry(active.reply_id).status == "interrupted"
    assert [p.id for p in after.queue.pending()] == [waiting]
    assert (await event_kinds(store))[-1] == "run_failed"
    again = await after.runs.start("m")
    assert again is not None and again.run.ids == (waiting,)


async def test_a_prompt_whose_author_lost_the_right_fails_forbidden_when_it_comes_up(
    store: Store, settings: Settings
) -> None:
    room = await loaded(store, settings)
    theirs = await prompt(room, "bob", "c1")
    await store.change_member(
        "s", "bob", Member("bob", "viewer"), 0, lambda *_: Decision(True, "test")
    )
    await room.reload_settings()  # same epoch: the prompt stays until it comes up
    assert room.queue.is_pending(theirs)
    assert await room.runs.start("m") is None
    assert await row_of(store, theirs) == ("failed", "forbidden", None)
    assert len(room.queue) == 0
