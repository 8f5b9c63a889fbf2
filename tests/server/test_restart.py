"""Crash and restart: nothing acknowledged is lost, nothing is duplicated.

The server runs as a subprocess that the test kills with SIGKILL mid-reply, then restarts
on the same database. The document comes back from its update log (never rebuilt from the
relational tables), so clients that kept their copy merge without duplicates.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from parley.server.store.db import create_engine
from parley.server.store.tables import doc_snapshots
from tests.conftest import ADMIN_KEY, ServerProcess, free_port, sqlite_url
from tests.server.test_storage_faults import release, write_lock_held
from tests.stock_client import StockYjsClient, ensure_node_modules
from tests.yclient import YClient, all_replies_settled


async def admin(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=20
    )


async def setup_session(http: httpx.AsyncClient, members: dict[str, str]) -> str:
    sid = str((await http.post("/api/v1/sessions", json={"title": "crash"})).json()["id"])
    for user, role in members.items():
        await http.put(f"/api/v1/sessions/{sid}/members/{user}", json={"role": role})
    return sid


async def token(http: httpx.AsyncClient, sid: str, user: str) -> str:
    response = await http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": user})
    return str(response.json()["token"])


def streaming_reply(client: YClient) -> bool:
    return any(
        e["kind"] == "reply" and e["status"] == "streaming" and len(str(e["content"])) > 10
        for e in client.entries()
    )


def ids(entries: list[dict[str, Any]]) -> list[str]:
    return [str(e["id"]) for e in entries]


async def test_sigkill_mid_reply_then_restart(
    database_url: str, tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    port = free_port()
    node = ServerProcess(database_url, tmp_path / "data", port, PARLEY_OFFLINE_TOKEN_DELAY_MS="40")
    server_processes.append(node)
    await node.start()
    async with await admin(node.base_url) as http:
        sid = await setup_session(http, {"alice": "editor", "bob": "editor"})
        alice = await YClient.connect(node.ws_url, sid, await token(http, sid, "alice"))
        bob = await YClient.connect(node.ws_url, sid, await token(http, sid, "bob"))
        acks = [
            await alice.command({"type": "prompt", "id": "a1", "text": "first"}),
            await bob.command({"type": "prompt", "id": "b1", "text": "second"}),
            await alice.command({"type": "prompt", "id": "a2", "text": "third"}),
        ]
        assert [a["seq"] for a in acks] == [1, 2, 3]
        await bob.wait_until(streaming_reply)
        node.kill()
        assert await bob.wait_closed() is not None
        kept = bob.doc  # bob's copy from before the crash
        await alice.close()

        await node.start()
        fresh = await YClient.connect(node.ws_url, sid, await token(http, sid, "alice"))
        rejoined = await YClient.connect(node.ws_url, sid, await token(http, sid, "bob"))
        rejoined.doc.apply_update(kept.get_update())  # bob's old copy merges in
        await fresh.wait_until(lambda c: all_replies_settled(c, 3), timeout=60)
        await rejoined.wait_until(lambda c: all_replies_settled(c, 3), timeout=60)
        entries = fresh.entries()
        assert ids(rejoined.entries()) == ids(entries)
        assert len(set(ids(entries))) == len(entries)  # nothing appears twice

        by_id = {e["id"]: e for e in entries}
        first = by_id[acks[0]["prompt_id"]]
        assert first["status"] == "failed" and first["reason_code"] == "server_restart"
        cut = by_id[first["reply_id"]]
        assert cut["status"] == "interrupted" and len(str(cut["content"])) > 10
        for ack in acks[1:]:
            prompt = by_id[ack["prompt_id"]]
            assert prompt["status"] == "done"
            replies = [e for e in entries if e.get("reply_to") == ack["prompt_id"]]
            assert len(replies) == 1 and replies[0]["status"] == "done"
        assert [e["kind"] for e in entries] == ["prompt", "reply"] * 3

        # A resend after the restart is still recognised.
        again = await fresh.command({"type": "prompt", "id": "a1", "text": "first"})
        assert again == acks[0]
        rest = await http.get(f"/api/v1/sessions/{sid}/transcript")
        assert ids(rest.json()["messages"]) == ids(entries)
        for client in (fresh, rejoined):
            await client.close()


async def test_a_call_cut_off_by_a_crash_is_counted_once(
    database_url: str, tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    """Review H2: a model call cut off by SIGKILL after it began to stream cost its
    issuer nothing (no usage row, the quotas blind to it). The restart that marks it counts
    it, as an estimate (its request in as its context is rebuilt, what it streamed out as
    stored), and once: a second restart counts it no more."""
    node = ServerProcess(
        database_url, tmp_path / "data", free_port(), PARLEY_OFFLINE_TOKEN_DELAY_MS="40"
    )
    server_processes.append(node)
    await node.start()
    async with await admin(node.base_url) as http:
        sid = await setup_session(http, {"alice": "editor"})
        alice = await YClient.connect(node.ws_url, sid, await token(http, sid, "alice"))
        await alice.command({"type": "prompt", "id": "a1", "text": "tell me a long story"})
        await alice.wait_until(streaming_reply)
        node.kill()
        await alice.wait_closed()

        await node.start()
        # Read once the session is loaded again (and its cut-off run marked).
        messages = (await http.get(f"/api/v1/sessions/{sid}/transcript")).json()["messages"]
        cut = next(e for e in messages if e["kind"] == "reply")
        assert cut["status"] == "interrupted" and len(str(cut["content"])) > 10
        usage = (await http.get(f"/api/v1/sessions/{sid}/usage")).json()
        [counted] = usage["users"]
        assert counted["user_id"] == "alice" and counted["calls"] == 1
        assert counted["input_tokens"] > 0 and counted["output_tokens"] > 0

        node.kill()
        await node.start()
        assert (await http.get(f"/api/v1/sessions/{sid}/transcript")).status_code == 200
        assert (await http.get(f"/api/v1/sessions/{sid}/usage")).json() == usage


async def test_snapshots_preserve_content_across_restart(
    database_url: str, tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    node = ServerProcess(
        database_url,
        tmp_path / "data",
        free_port(),
        PARLEY_SNAPSHOT_EVERY_UPDATES="7",
        PARLEY_OFFLINE_TOKEN_DELAY_MS="0",
    )
    server_processes.append(node)
    await node.start()
    async with await admin(node.base_url) as http:
        sid = await setup_session(http, {"alice": "editor"})
        alice = await YClient.connect(node.ws_url, sid, await token(http, sid, "alice"))
        for n in range(6):
            await alice.command({"type": "prompt", "id": f"p{n}", "text": f"prompt {n}"})
            await alice.command({"type": "message", "id": f"m{n}", "text": f"note {n}"})
        await alice.wait_until(lambda c: all_replies_settled(c, 6), timeout=60)
        before = (await http.get(f"/api/v1/sessions/{sid}/transcript")).json()
        state_before = alice.doc.get_update()
        await alice.close()
        node.stop()
        assert await snapshot_count(database_url, sid) == 1  # the squash path really ran
        await node.start()
        after = (await http.get(f"/api/v1/sessions/{sid}/transcript")).json()
        assert after == before
        reader = await YClient.connect(node.ws_url, sid, await token(http, sid, "alice"))
        await asyncio.wait_for(reader.synced.wait(), 10)
        assert reader.entries() == alice.entries()
        # A client holding the pre-restart state finds nothing new to take or give.
        reader.doc.apply_update(state_before)
        assert reader.entries() == alice.entries()
        await reader.close()


async def snapshot_count(database_url: str, session_id: str) -> int:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(
                select(func.count())
                .select_from(doc_snapshots)
                .where(doc_snapshots.c.session_id == session_id)
            )
            return int(result.scalar_one())
    finally:
        await engine.dispose()


@pytest.mark.node
async def test_stock_yjs_client_stays_connected_across_restart(
    tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    await asyncio.to_thread(ensure_node_modules)
    url = sqlite_url(tmp_path)
    node = ServerProcess(url, tmp_path / "data", free_port(), PARLEY_OFFLINE_TOKEN_DELAY_MS="5")
    server_processes.append(node)
    await node.start()
    async with await admin(node.base_url) as http:
        sid = await setup_session(http, {"alice": "editor", "sam": "viewer"})
        stock = await StockYjsClient.start(
            f"{node.ws_url}/ws/sessions", sid, await token(http, sid, "sam"), name="sam"
        )
        try:
            await stock.wait_event(lambda e: e.get("event") == "sync" and e["synced"], 15)
            alice = await YClient.connect(node.ws_url, sid, await token(http, sid, "alice"))
            await alice.command({"type": "prompt", "id": "1", "text": "before the restart"})
            await alice.wait_until(lambda c: all_replies_settled(c, 1))
            await alice.close()
            node.kill()
            await stock.wait_event(lambda e: e.get("event") == "connection-close", 10)
            await node.start()
            await stock.wait_event(lambda e: e.get("event") == "sync" and e["synced"], 30)
            alice = await YClient.connect(node.ws_url, sid, await token(http, sid, "alice"))
            await alice.command({"type": "prompt", "id": "2", "text": "after the restart"})
            await alice.wait_until(lambda c: all_replies_settled(c, 2))
            for _ in range(100):
                dump = await stock.dump()
                done = [
                    e for e in dump["transcript"] if e["kind"] == "reply" and e["status"] == "done"
                ]
                if len(done) == 2:
                    break
                await asyncio.sleep(0.1)
            transcript = dump["transcript"]
            assert [e["id"] for e in transcript] == ids(alice.entries())
            assert len({e["id"] for e in transcript}) == len(transcript) == 4
            await alice.close()
        finally:
            await stock.close()


async def test_a_lock_held_as_the_server_starts_delays_its_recovery_not_its_start(
    tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    """Review (faults): after a crash, a lock another process held as the server started
    failed the start on SQLite (the recovery's first write refused: 'Application startup
    failed') and hung it on PostgreSQL, every session down with it. The server starts and
    serves; the session cut off by the crash is recovered once the lock is free."""
    node = ServerProcess(
        sqlite_url(tmp_path),
        tmp_path / "data",
        free_port(),
        PARLEY_OFFLINE_TOKEN_DELAY_MS="40",
        PARLEY_DB_LOCK_TIMEOUT_S="0.3",
        PARLEY_DB_RETRY_AFTER_S="0.2",
    )
    server_processes.append(node)
    await node.start()
    async with await admin(node.base_url) as http:
        sid = await setup_session(http, {"alice": "editor"})
        alice = await YClient.connect(node.ws_url, sid, await token(http, sid, "alice"))
        asked = await alice.command({"type": "prompt", "id": "a1", "text": "first"})
        await alice.wait_until(streaming_reply)
        node.kill()
        await alice.close()
        async with write_lock_held(tmp_path / "parley.db") as holder:
            await node.start()
            assert (await http.get(f"{node.base_url}/healthz")).status_code == 200
            await release(holder)
        fresh = await YClient.connect(node.ws_url, sid, await token(http, sid, "alice"))
        await fresh.wait_until(lambda c: all_replies_settled(c, 1), timeout=60)
        [prompt] = [e for e in fresh.entries() if e["id"] == asked["prompt_id"]]
        assert (prompt["status"], prompt["reason_code"]) == ("failed", "server_restart")
        await fresh.close()
