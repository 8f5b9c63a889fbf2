"""Streamed reply text reaches the sockets from the group commit's round that stored it,
not from the writer that submitted it: a woken writer waits its turn behind everything the
loop has ready, and under load that wait was a third of a token's way (issue #22)."""

from __future__ import annotations

import asyncio

from tests.fake_model import FakeModel
from tests.server.runtime.harness import memory_session


async def test_streamed_text_is_broadcast_by_the_round_that_stored_it() -> None:
    tokens = [f"t{n} " for n in range(20)]
    async with memory_session({"alice": "editor"}, FakeModel(lambda sent: tokens)) as s:
        document = s.room.writer.document
        sent_by: list[str] = []
        broadcast = document.broadcast

        def noting(message: bytes) -> None:
            task = asyncio.current_task()
            sent_by.append("" if task is None else task.get_name())
            broadcast(message)

        document.broadcast = noting
        runs = s.room.runs
        appended: list[str] = []
        append_reply = runs.append_reply

        async def appending(active: object, text: str) -> None:
            appended.append(text)
            before = len(sent_by)
            await append_reply(active, text)  # type: ignore[arg-type]
            # Sent once, by the round, before this writer ran again.
            assert sent_by[before:] == ["group-commit"]

        runs.append_reply = appending  # type: ignore[method-assign]
        asked = await s.prompt("alice", "go")
        await s.settled(asked["prompt_id"])
        assert "".join(appended) == "".join(tokens)
        reply_id = s.room.doc.entry(asked["prompt_id"]).reply_id
        assert reply_id is not None and s.room.doc.entry(reply_id).content == "".join(tokens)
