"""Many members prompting one session at once, in a room on the real SQLite and PostgreSQL
store: nothing lost, one order (the document, what the room broadcast and what the store
keeps), replies in place. (That sessions run in parallel is tested on the registry:
``tests/server/runtime``; that every member's socket gets the reply:
``tests/server/test_ws.py``.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from parley.session.commands import PromptCommand
from tests.server.runtime.backend import sql_store
from tests.server.runtime.harness import RecordingOffline, memory_session, stored_transcript

# A heavy test: it shares one xdist worker with the others (see test_policies).
pytestmark = pytest.mark.xdist_group("heavy")

CLIENTS = 20
PROMPTS_EACH = 10


def check_story(entries: list[dict[str, Any]], expected_prompts: int) -> None:
    prompts = [e for e in entries if e["kind"] == "prompt"]
    assert len(prompts) == expected_prompts
    assert len({p["id"] for p in prompts}) == expected_prompts
    seqs = [int(p["seq"]) for p in prompts]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert seqs == list(range(1, expected_prompts + 1))
    for index, entry in enumerate(entries):
        if entry["kind"] == "prompt":
            reply = entries[index + 1]
            assert reply["kind"] == "reply" and reply["reply_to"] == entry["id"]
            assert reply["status"] == "done" and entry["status"] == "done"
            assert f"Hello {entry['author']}" in str(reply["content"])
            assert str(entry["content"]) in str(reply["content"])


async def test_many_clients_prompting_at_once(database_url: str) -> None:
    members: dict[str, Any] = {f"user{i:02d}": "editor" for i in range(CLIENTS)}
    async with (
        sql_store(database_url) as store,
        memory_session(members, RecordingOffline(), store=store) as s,
    ):

        async def burst(user: str) -> list[dict[str, Any]]:
            return list(
                await asyncio.gather(
                    *(
                        s.send(user, PromptCommand(f"{user}-{n}", f"{user} #{n}"))
                        for n in range(PROMPTS_EACH)
                    )
                )
            )

        acks = await asyncio.gather(*(burst(u) for u in members))
        flat = [a for per_user in acks for a in per_user]
        assert all(a["type"] == "ack" for a in flat), [a for a in flat if a["type"] != "ack"][:3]
        total = CLIENTS * PROMPTS_EACH
        assert sorted(a["seq"] for a in flat) == list(range(1, total + 1))
        await s.settled(*(a["prompt_id"] for a in flat), timeout_s=300)
        shown = [e.to_json() for e in s.room.doc.entries()]
        broadcast = s.watcher.transcript()
        stored = await stored_transcript(store)

    order = [e["id"] for e in shown]
    assert [e["id"] for e in broadcast] == order  # what a member's client holds
    assert [e["id"] for e in stored] == order  # what the session loads again
    check_story(shown, total)
    check_story(broadcast, total)

    # Each user's own prompts kept their order, and the ack's seq is the stored one.
    by_id = {e["id"]: e for e in stored}
    for per_user in acks:
        seqs = [int(by_id[a["prompt_id"]]["seq"]) for a in per_user]
        assert seqs == [a["seq"] for a in per_user]
