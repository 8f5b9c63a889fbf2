"""Run control over real sockets: cancelling stops the model call at once, a policy set over
REST. The rules of runs (time limits, queue order, policies, limits) are tested on a room
over the in-memory store: ``tests/server/runtime/test_runs.py``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.conftest import RunningServer, make_settings, serve_in_process
from tests.fake_model import FakeModel, repeating
from tests.yclient import YClient, all_replies_settled


def endless() -> FakeModel:
    """A model that streams a word every 20 ms until its stream is closed."""
    return FakeModel(lambda sent: repeating(lambda: asyncio.sleep(0.02), "word "))


def streaming(client: YClient) -> bool:
    return any(
        e["kind"] == "reply" and e["status"] == "streaming" and len(str(e["content"])) > 20
        for e in client.entries()
    )


async def test_cancel_closes_the_model_stream_quickly(database_url: str, tmp_path: Path) -> None:
    provider = endless()
    async with serve_in_process(make_settings(database_url, tmp_path / "d"), provider) as server:
        sid = await server.new_session({"alice": "editor"})
        alice = await server.connect(sid, "alice")
        ack = await alice.command({"type": "prompt", "id": "p", "text": "go on forever"})
        await alice.wait_until(streaming)
        sent = time.monotonic()
        cancelled = await alice.command(
            {"type": "cancel", "id": "c", "prompt_id": ack["prompt_id"]}
        )
        assert cancelled["type"] == "ack"
        closed_at = provider.requests[0].closed_at
        assert closed_at is not None, "the model's stream was closed"
        elapsed = closed_at - sent
        print(f"\ncancel to upstream close: {elapsed * 1000:.1f} ms")
        await alice.wait_until(lambda c: all_replies_settled(c, 1))
        prompt, reply = alice.entries()
        assert prompt["status"] == "cancelled" and reply["status"] == "cancelled"
        assert reply["content"].startswith("word")  # the partial reply is kept


async def test_policy_over_rest(sqlite_server: RunningServer) -> None:
    server = sqlite_server
    created = await server.http.post("/api/v1/sessions", json={"policy": "reject"})
    assert created.json()["policy"] == "reject"
    sid = created.json()["id"]
    patched = await server.http.patch(f"/api/v1/sessions/{sid}", json={"policy": "interrupt"})
    assert patched.status_code == 200 and patched.json()["policy"] == "interrupt"
    bad = await server.http.patch(f"/api/v1/sessions/{sid}", json={"policy": "random"})
    assert bad.status_code == 422
    assert (await server.http.get(f"/api/v1/sessions/{sid}")).json()["policy"] == "interrupt"
