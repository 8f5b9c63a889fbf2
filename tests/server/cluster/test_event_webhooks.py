"""Event webhooks on a cluster: both nodes' senders claim from one outbox, and each
delivery goes out once (``FOR UPDATE SKIP LOCKED``), in per-session order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_KEY, sender_processes
from tests.server.cluster.nodes import cluster
from tests.server.test_event_webhooks import (
    all_recorded,
    deliveries,
    per_session,
    receiving,
    subscribe,
    until,
)

pytestmark = pytest.mark.postgres


async def test_each_delivery_goes_out_once_across_nodes(tmp_path: Path) -> None:
    # Each node's sender in a process of its own, the default of 'parley serve' (on the
    # loop: tests/server/test_event_webhooks.py).
    env = {"PARLEY_WEBHOOK_ALLOW_PRIVATE": "true", "PARLEY_WEBHOOK_POLL_S": "0.05"}
    async with receiving() as receiver, cluster(tmp_path, 2, **env) as nodes:
        for node in nodes.nodes:  # none before there is something to deliver
            assert node.process is not None and sender_processes(node.process.pid) == []
        hook = await subscribe(nodes.http, receiver.url, events=["session.created", "member.added"])
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        clients = [
            httpx.AsyncClient(base_url=node.base_url, headers=headers, timeout=30)
            for node in nodes.nodes
        ]

        async def session_via(n: int) -> str:
            http = clients[n % 2]
            made = await http.post("/api/v1/sessions", json={"title": f"s{n}"})
            sid = str(made.json()["id"])
            for user in ("a", "b", "c"):
                put = await clients[(n + 1) % 2].put(
                    f"/api/v1/sessions/{sid}/members/{user}", json={"role": "viewer"}
                )
                assert put.status_code == 200, put.text
            return sid

        try:
            sids = await asyncio.gather(*(session_via(n) for n in range(8)))
        finally:
            for client in clients:
                await client.aclose()

        async def all_arrived() -> bool:
            return len(receiver.received) >= 8 * 4

        await until(all_arrived, "every delivery", timeout_s=30)
        for node in nodes.nodes:  # each wrote deliveries, and so started its sender
            assert node.process is not None and len(sender_processes(node.process.pid)) == 1
        verified = receiver.verified(hook["secret"])
        ids = [i for i, _ in verified]
        assert len(ids) == len(set(ids)) == 32
        sessions = per_session([p for _, p in verified])
        for sid in sids:
            types = [p["type"] for p in sessions[sid]]
            assert types == ["session.created", "member.added", "member.added", "member.added"]
            seqs = [p["data"]["event_seq"] for p in sessions[sid]]
            assert seqs == [0, 1, 2, 3]
        await until(all_recorded(nodes.http, hook["id"]), "every attempt recorded")
        listed = await deliveries(nodes.http, hook["id"])
        assert all(len(d["attempts"]) == 1 for d in listed) and len(listed) == 32
