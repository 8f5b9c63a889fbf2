"""A prompt that finds the runner idle starts its run in the transaction that stores it:
one commit, one broadcast, and the runner takes the run already begun. A prompt that
finds a run in flight waits its turn as before, and a run begun but never taken (the
room closing) still lets whoever waits for it go on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.server.runtime.commands import dispatch
from parley.server.runtime.room import SessionRoom
from parley.server.runtime.runner import SessionRunner
from parley.server.store.db import create_engine
from parley.server.store.sessions import Store
from parley.server.store.tables import doc_updates, entries
from parley.session.commands import PromptCommand
from parley.session.model import Finish, ModelEvent, ModelRequest, TextDelta, Usage
from parley.session.queue import Policy
from tests.conftest import entry_columns, make_settings

WAIT_S = 10.0


class GatedModel:
    """Answers each call with ``answer`` once ``gate`` is open; counts its calls."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls = 0
        self.called = asyncio.Event()

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        self.calls += 1
        self.called.set()
        await self.gate.wait()
        yield TextDelta("answer")
        yield Usage(input_tokens=1, output_tokens=1)
        yield Finish("stop")


@pytest.fixture
async def room(database_url: str, tmp_path: Path) -> AsyncIterator[SessionRoom]:
    store = Store(create_engine(database_url))
    await store.create_session("s", "t", Policy.QUEUE.value, 0)
    for user_id in ("ann", "bob"):
        await store.change_member(
            "s", user_id, Member(user_id, "editor"), 0, lambda *_: Decision(True, "test")
        )
    room = SessionRoom("s", store=store, settings=make_settings(database_url, tmp_path))
    await room.load("t", Policy.QUEUE)
    try:
        yield room
    finally:
        await store.close()


async def started_runner(room: SessionRoom, model: GatedModel) -> SessionRunner:
    """A runner waiting idle for work, as a loaded room has one."""
    runner = SessionRunner(room, model, run_timeout_s=WAIT_S)
    runner.start()
    await until(lambda: room.runs.idle)
    return runner


async def until(condition: Callable[[], bool]) -> None:
    """Wait (a bounded while) until ``condition`` holds."""
    for _ in range(int(WAIT_S / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def statuses(room: SessionRoom) -> dict[str, str]:
    async with room.store.read() as connection:
        rows = await connection.execute(select(entries.c.id, entries.c.status))
        return {row.id: row.status for row in rows}


async def updates_stored(room: SessionRoom) -> int:
    async with room.store.read() as connection:
        counted = await connection.execute(select(func.count()).select_from(doc_updates))
        return int(counted.scalar_one())


async def prompt(room: SessionRoom, actor: str, command_id: str) -> str:
    reply = json.loads(await dispatch(room, actor, PromptCommand(command_id, "hello")))
    assert reply["type"] == "ack", reply
    return str(reply["prompt_id"])


async def settled(room: SessionRoom, prompt_id: str) -> None:
    await until(lambda: room.doc.entry(prompt_id).status in ("done", "failed", "cancelled"))


async def test_a_prompt_to_an_idle_runner_is_stored_and_started_in_one_commit(
    room: SessionRoom,
) -> None:
    model = GatedModel()
    runner = await started_runner(room, model)
    try:
        before = await updates_stored(room)
        kinds_before = len(await room.store.events_after("s", 0, 100))
        # Never queued, the prompt leaves the document's queue untouched: no item put in
        # and taken out again (a tombstone every later insert there walks past).
        queue_changes: list[object] = []
        room.doc.queue.observe(lambda event: queue_changes.append(event))
        prompt_id = await prompt(room, "ann", "c1")
        assert queue_changes == []
        # As the ack is returned, before the runner had a turn: the run is in flight.
        active = room.active_run
        assert active is not None and active.run.ids == (prompt_id,)
        assert room.doc.entry(prompt_id).status == "running"
        # The row, inserted running, names its reply and when it started, as the update of
        # a queued row does.
        status, reply_id, started_at = await entry_columns(
            room.store, prompt_id, "status", "reply_id", "started_at"
        )
        assert (status, reply_id) == ("running", active.reply_id)
        assert started_at == room.doc.entry(prompt_id).started_at is not None
        assert await updates_stored(room) == before + 1  # one write, not two
        kinds = [e.kind for e in await room.store.events_after("s", 0, 100)][kinds_before:]
        assert kinds == ["prompt_accepted", "run_started"]
        # The runner answers the run begun for it.
        async with asyncio.timeout(WAIT_S):
            await model.called.wait()
        model.gate.set()
        await settled(room, prompt_id)
        assert room.doc.entry(prompt_id).status == "done"
        assert room.doc.entry(active.reply_id).content == "answer"
        assert model.calls == 1
        async with asyncio.timeout(WAIT_S):
            await active.finished.wait()
        assert room.active_run is None and room.runs.begun is None
    finally:
        await runner.stop()


async def test_a_prompt_during_a_run_waits_its_turn(room: SessionRoom) -> None:
    model = GatedModel()
    runner = await started_runner(room, model)
    try:
        first = await prompt(room, "ann", "c1")
        async with asyncio.timeout(WAIT_S):
            await model.called.wait()
        second = await prompt(room, "bob", "c2")
        assert room.doc.entry(second).status == "queued"
        assert (await statuses(room))[second] == "queued"
        active = room.active_run
        assert active is not None and active.run.ids == (first,)
        model.gate.set()
        await settled(room, first)
        await settled(room, second)
        assert room.doc.entry(second).status == "done"
        assert model.calls == 2
    finally:
        await runner.stop()


async def test_a_prompt_with_no_runner_is_only_stored(room: SessionRoom) -> None:
    prompt_id = await prompt(room, "ann", "c1")
    assert room.active_run is None
    assert (await statuses(room))[prompt_id] == "queued"


async def test_a_run_begun_but_not_taken_lets_its_waiters_go_when_the_runner_stops(
    room: SessionRoom,
) -> None:
    model = GatedModel()
    runner = await started_runner(room, model)
    await prompt(room, "ann", "c1")
    active = room.active_run
    assert active is not None
    await runner.stop()  # taken or not by then: whoever waits for it goes on
    assert active.finished.is_set()
    assert room.runs.begun is None
    # A prompt after the runner stopped is not started by anyone.
    second = await prompt(room, "bob", "c2")
    assert (await statuses(room))[second] == "queued"
