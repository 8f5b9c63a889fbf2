"""Semantic events on a cluster: changes made through either node share one numbering.

Two real ``parley serve`` nodes on one PostgreSQL; the session runs on the first. Prompts
go through the first, membership and settings changes through the second (stored there,
or forwarded to the first), while the runs' events are stored by the first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.server.cluster.nodes import cluster
from tests.yclient import all_replies_settled

pytestmark = pytest.mark.postgres


async def _events(base_url: str, sid: str) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as http:
        response = await http.get(f"/api/v1/sessions/{sid}/events", params={"limit": 500})
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def test_events_of_both_nodes_share_one_order(tmp_path: Path) -> None:
    async with cluster(tmp_path, 2, PARLEY_OFFLINE_TOKEN_DELAY_MS="0") as nodes:
        runner, follower = nodes.nodes
        sid = await nodes.new_session({"olga": "owner", "bob": "editor"})
        assert (await nodes.wait_holder(sid))[0] == "n0"
        bob = await nodes.connect(runner, sid, "bob")
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(
            base_url=follower.base_url, headers=headers, timeout=60
        ) as via:
            acks = []
            for n in range(3):
                acks.append(await bob.command({"type": "prompt", "id": f"p{n}", "text": "hi"}))
                member = await via.put(
                    f"/api/v1/sessions/{sid}/members/u{n}", json={"role": "viewer"}
                )
                assert member.status_code == 200, member.text
                policy = "coalesce" if n % 2 == 0 else "queue"
                patched = await via.patch(f"/api/v1/sessions/{sid}", json={"policy": policy})
                assert patched.status_code == 200, patched.text
            await bob.wait_until(
                lambda c: (
                    all(e["status"] not in {"queued", "running"} for e in c.entries())
                    and all_replies_settled(c, 1)
                ),
                timeout=60,
            )
        here, there = await _events(runner.base_url, sid), await _events(follower.base_url, sid)
        assert here == there
        assert [e["seq"] for e in here] == list(range(1, len(here) + 1))
        kinds = [e["kind"] for e in here]
        assert kinds.count("member_joined") == 5
        assert kinds.count("settings_changed") == 3
        accepted = [e["data"]["prompt_id"] for e in here if e["kind"] == "prompt_accepted"]
        assert accepted == [a["prompt_id"] for a in acks]
        # Every prompt accepted ends once, after its run started (or without one).
        ended: dict[str, int] = {}
        started: dict[str, int] = {}
        for event in here:
            data = event["data"]
            if event["kind"] == "run_started":
                started.update(dict.fromkeys(data["prompt_ids"], event["seq"]))
            if event["kind"] in {"reply_completed", "run_failed"}:
                for prompt_id in data["prompt_ids"]:
                    assert prompt_id not in ended
                    ended[prompt_id] = event["seq"]
        assert set(ended) == set(accepted)
        assert all(started[p] < ended[p] for p in started)
