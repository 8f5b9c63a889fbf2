"""A write leaves nothing for the garbage collector.

Objects in a reference cycle are freed only by the cyclic collector, whose pauses stop the
event loop for every session at once; a write's objects (its transaction, the SQLAlchemy
connection it holds) were in one, so every acked command and every group-commit round
added to those pauses. Counted (``tests.garbage``), never timed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from bench.ack_round_trips import wait_idle
from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.server.runtime.commands import dispatch
from parley.server.runtime.room import SessionRoom
from parley.server.runtime.runner import SessionRunner
from parley.server.store.db import create_engine
from parley.server.store.sessions import Store
from parley.session.commands import MessageCommand, PromptCommand
from parley.session.model import Finish, ModelEvent, ModelRequest, TextDelta, Usage
from parley.session.queue import Policy
from tests.conftest import make_settings
from tests.garbage import cyclic_garbage


class ThreeWords:
    """Streams a short reply, a turn of the event loop between words (group commits)."""

    name = "three-words"

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        for word in ("one ", "two ", "three"):
            yield TextDelta(word)
            await asyncio.sleep(0)
        yield Usage(input_tokens=1, output_tokens=3)
        yield Finish("stop")


@contextlib.asynccontextmanager
async def _room(database_url: str, tmp_path: Path) -> AsyncIterator[SessionRoom]:
    store = Store(create_engine(database_url))
    try:
        await store.create_session("s", "t", Policy.QUEUE.value, 0)
        allow = lambda *_: Decision(True, "test")  # noqa: E731
        await store.change_member("s", "ann", Member("ann", "editor"), 0, allow)
        room = SessionRoom("s", store=store, settings=make_settings(database_url, tmp_path))
        await room.load("t", Policy.QUEUE)
        yield room
    finally:
        await store.close()


async def test_acked_commands_leave_no_cyclic_garbage(database_url: str, tmp_path: Path) -> None:
    async with _room(database_url, tmp_path) as room:

        async def commands(tag: str) -> None:
            for index in range(5):
                prompt = PromptCommand(f"p{tag}{index}", "hi")
                assert '"ack"' in await dispatch(room, "ann", prompt)
                message = MessageCommand(f"m{tag}{index}", "hi")
                assert '"ack"' in await dispatch(room, "ann", message)

        await commands("warm")  # caches, prepared statements, pooled connections
        kinds = await cyclic_garbage(lambda: commands("counted"))
        assert not kinds, kinds.most_common(12)


async def test_runs_leave_no_cyclic_garbage(database_url: str, tmp_path: Path) -> None:
    """A run's start, its streamed text (the group commit) and its finish."""
    async with _room(database_url, tmp_path) as room:
        runner = SessionRunner(room, ThreeWords(), run_timeout_s=30)
        runner.start()
        try:

            async def runs(tag: str) -> None:
                for index in range(3):
                    await dispatch(room, "ann", PromptCommand(f"{tag}{index}", "hi"))
                    await wait_idle(room)

            await runs("warm")
            kinds = await cyclic_garbage(lambda: runs("counted"))
        finally:
            await runner.stop()
        assert room.doc.entries()[-1].content == "one two three"
        assert not kinds, kinds.most_common(12)
