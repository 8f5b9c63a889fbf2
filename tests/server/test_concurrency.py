"""Many members prompting one session at once: nothing lost, one order, replies in place.
(That sessions run in parallel is tested on the registry: ``tests/server/runtime``.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import RunningServer
from tests.yclient import YClient, all_replies_settled

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


async def test_many_clients_prompting_at_once(server: RunningServer) -> None:
    members = {f"user{i:02d}": "editor" for i in range(CLIENTS)}
    sid = await server.new_session(members)
    clients = await asyncio.gather(*(server.connect(sid, user) for user in members))

    async def burst(client: YClient, user: str) -> list[dict[str, Any]]:
        return list(
            await asyncio.gather(
                *(
                    client.command({"type": "prompt", "id": f"{user}-{n}", "text": f"{user} #{n}"})
                    for n in range(PROMPTS_EACH)
                )
            )
        )

    acks = await asyncio.gather(*(burst(c, u) for c, u in zip(clients, members, strict=True)))
    flat = [a for per_client in acks for a in per_client]
    assert all(a["type"] == "ack" for a in flat), [a for a in flat if a["type"] != "ack"][:3]
    assert sorted(a["seq"] for a in flat) == list(range(1, CLIENTS * PROMPTS_EACH + 1))

    total = CLIENTS * PROMPTS_EACH
    # Watch one client until the queue drains, then every other one (cheap once settled).
    for client in clients:
        await client.wait_until(lambda c: all_replies_settled(c, total), timeout=120)
    views = [c.entries() for c in clients]
    order = [e["id"] for e in views[0]]
    for view in views[1:]:
        assert [e["id"] for e in view] == order
    check_story(views[0], total)

    # Each user's own prompts kept their order, and the ack's seq is the stored one.
    by_id = {e["id"]: e for e in views[0]}
    for per_client in acks:
        seqs = [int(by_id[a["prompt_id"]]["seq"]) for a in per_client]
        assert seqs == [a["seq"] for a in per_client]
    assert [m["id"] for m in await server.transcript(sid)] == order
