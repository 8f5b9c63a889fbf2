"""Run control over real sockets: cancelling stops the model call, timeouts, policies, queue."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pycrdt import Map

from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
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


async def test_a_run_past_its_time_limit_fails_and_the_queue_moves_on(tmp_path: Path) -> None:
    provider = endless()
    url = sqlite_url(tmp_path)
    settings = make_settings(url, tmp_path / "d", run_timeout_s=0.3)
    async with serve_in_process(settings, provider) as server:
        sid = await server.new_session({"alice": "editor"})
        alice = await server.connect(sid, "alice")
        await alice.command({"type": "prompt", "id": "1", "text": "one"})
        await alice.command({"type": "prompt", "id": "2", "text": "two"})
        await alice.wait_until(lambda c: all_replies_settled(c, 2), timeout=10)
        entries = alice.entries()
        assert [e["status"] for e in entries] == ["failed"] * 4
        assert all(e["reason_code"] == "timeout" for e in entries)
        assert [r.closed_at is not None for r in provider.requests] == [True, True]


async def test_the_queue_root_shows_waiting_prompts_in_run_order(tmp_path: Path) -> None:
    provider = endless()
    url = sqlite_url(tmp_path)
    async with serve_in_process(make_settings(url, tmp_path / "d"), provider) as server:
        sid = await server.new_session({"alice": "editor", "bob": "editor", "olga": "owner"})
        alice = await server.connect(sid, "alice")
        bob = await server.connect(sid, "bob")
        olga = await server.connect(sid, "olga")
        first = await alice.command({"type": "prompt", "id": "a1", "text": "a1"})
        await alice.wait_until(streaming)
        for n in (2, 3):
            await alice.command({"type": "prompt", "id": f"a{n}", "text": f"a{n}"})
        await bob.command({"type": "prompt", "id": "b1", "text": "b1"})

        def queue_texts(client: YClient) -> list[tuple[str, int]]:
            return [(str(item["author"]), int(item["seq"])) for item in client.queue]

        # Round-robin: bob's first prompt runs before alice's third.
        await olga.wait_until(lambda c: len(c.queue) == 3)
        assert queue_texts(olga) == [("alice", 2), ("bob", 4), ("alice", 3)]
        switched = await olga.command({"type": "set_policy", "id": "s", "policy": "coalesce"})
        assert switched == {"type": "ack", "id": "s", "seq": None, "policy": "coalesce"}
        await olga.wait_until(lambda c: [s for _, s in queue_texts(c)] == [2, 3, 4])
        denied = await bob.command({"type": "set_policy", "id": "s", "policy": "reject"})
        assert denied["code"] == "forbidden"
        await olga.command({"type": "cancel", "id": "c", "prompt_id": first["prompt_id"]})
        # Coalesce: the three waiting prompts are answered by one run.
        await olga.wait_until(lambda c: any(len(e.get("answers") or []) == 3 for e in c.entries()))
        assert len(provider.requests) == 2
        second = provider.requests[1]
        assert second.issuers == ("alice", "bob")
        answered = [m["content"] for m in second.asked]
        assert answered == ["[alice asks you]\na2", "[alice asks you]\na3", "[bob asks you]\nb1"]
        assert olga.queue.to_py() == []
        assert olga.doc.get("meta", type=Map).to_py()["policy"] == "coalesce"
        a2 = next(e["id"] for e in olga.entries() if e["content"] == "a2")
        # An editor may not cancel a run that also answers someone else; an owner may.
        refused = await alice.command({"type": "cancel", "id": "c", "prompt_id": a2})
        assert refused["code"] == "forbidden"
        await olga.command({"type": "cancel", "id": "c2", "prompt_id": a2})
        await olga.wait_until(lambda c: all_replies_settled(c, 2))
        statuses = {e["content"]: e["status"] for e in olga.entries() if e["kind"] == "prompt"}
        assert statuses == {
            "a1": "cancelled",
            "a2": "cancelled",
            "a3": "cancelled",
            "b1": "cancelled",
        }


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


async def test_reject_names_the_running_prompt(tmp_path: Path) -> None:
    provider = endless()
    url = sqlite_url(tmp_path)
    async with serve_in_process(make_settings(url, tmp_path / "d"), provider) as server:
        response = await server.http.post("/api/v1/sessions", json={"policy": "reject"})
        sid = response.json()["id"]
        for user in ("alice", "bob"):
            await server.http.put(f"/api/v1/sessions/{sid}/members/{user}", json={"role": "editor"})
        alice = await server.connect(sid, "alice")
        bob = await server.connect(sid, "bob")
        first = await alice.command({"type": "prompt", "id": "1", "text": "long"})
        busy = await bob.command({"type": "prompt", "id": "1", "text": "me too"})
        assert busy["type"] == "error" and busy["code"] == "busy"
        assert first["prompt_id"] in busy["message"] and "alice" in busy["message"]
        # Resending an accepted prompt while busy still returns its ack.
        assert await alice.command({"type": "prompt", "id": "1", "text": "long"}) == first
        await alice.command({"type": "cancel", "id": "c", "prompt_id": first["prompt_id"]})
        ok = await bob.command({"type": "prompt", "id": "2", "text": "now?"})
        assert ok["type"] == "ack" and ok["seq"] == 2
        await bob.command({"type": "cancel", "id": "c", "prompt_id": ok["prompt_id"]})


async def test_queue_limits_refuse_with_queue_full_and_store_nothing(tmp_path: Path) -> None:
    provider = endless()
    url = sqlite_url(tmp_path)
    settings = make_settings(url, tmp_path / "d", max_pending_per_user=2, max_pending_per_session=3)
    async with serve_in_process(settings, provider) as server:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        alice = await server.connect(sid, "alice")
        bob = await server.connect(sid, "bob")
        running = await alice.command({"type": "prompt", "id": "0", "text": "runs"})
        await alice.wait_until(streaming)
        replies = [
            await alice.command({"type": "prompt", "id": str(n), "text": "x"}) for n in (1, 2, 3)
        ]
        assert [r["type"] for r in replies] == ["ack", "ack", "error"]
        assert replies[2]["code"] == "queue_full" and "limit 2" in replies[2]["message"]
        assert (await bob.command({"type": "prompt", "id": "b1", "text": "x"}))["type"] == "ack"
        full = await bob.command({"type": "prompt", "id": "b2", "text": "x"})
        assert full["code"] == "queue_full" and "limit 3" in full["message"]
        seqs = [int(e["seq"]) for e in await server.transcript(sid) if e["kind"] == "prompt"]
        assert seqs == [1, 2, 3, 4]  # the refused prompts took no sequence number
        await alice.command({"type": "cancel", "id": "c", "prompt_id": running["prompt_id"]})
        for client, ack in ((alice, replies[0]), (alice, replies[1])):
            await client.command(
                {"type": "cancel", "id": "c" + ack["id"], "prompt_id": ack["prompt_id"]}
            )
