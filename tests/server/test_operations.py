"""Operations: graceful shutdown on SIGTERM, the database going away, structured logs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import websockets
from pycrdt import Doc

from parley.session.yprotocol import SyncType, encode_sync
from tests.conftest import (
    ADMIN_KEY,
    POSTGRES_URL,
    REQUIRE_POSTGRES,
    ServerProcess,
    free_port,
    make_settings,
    postgres_database,
    serve_in_process,
    sqlite_url,
)
from tests.yclient import YClient, all_replies_settled


async def setup(base_url: str, members: dict[str, str]) -> tuple[httpx.AsyncClient, str]:
    http = httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=20
    )
    sid = str((await http.post("/api/v1/sessions", json={})).json()["id"])
    for user, role in members.items():
        await http.put(f"/api/v1/sessions/{sid}/members/{user}", json={"role": role})
    return http, sid


async def connect(node: ServerProcess, http: httpx.AsyncClient, sid: str, user: str) -> YClient:
    token = (await http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": user})).json()
    client = await YClient.connect(node.ws_url, sid, token["token"])
    await asyncio.wait_for(client.synced.wait(), 10)
    return client


async def test_sigterm_drains_then_the_queue_resumes(
    tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    url = sqlite_url(tmp_path)
    node = ServerProcess(
        url,
        tmp_path / "d",
        free_port(),
        PARLEY_OFFLINE_TOKEN_DELAY_MS="200",
        PARLEY_SHUTDOWN_GRACE_S="0.5",
        PARLEY_LOG_FORMAT="json",
        PARLEY_LOG_LEVEL="info",
    )
    server_processes.append(node)
    await node.start()
    http, sid = await setup(node.base_url, {"alice": "editor"})
    try:
        alice = await connect(node, http, sid, "alice")
        first = await alice.command({"type": "prompt", "id": "1", "text": "a long answer"})
        second = await alice.command({"type": "prompt", "id": "2", "text": "waits its turn"})
        await alice.wait_until(
            lambda c: any(e["kind"] == "reply" and e["content"] for e in c.entries())
        )
        assert node.process is not None
        node.process.send_signal(signal.SIGTERM)
        assert await alice.wait_closed(timeout=10) == 1001
        # Uvicorn re-raises the signal once it has shut down cleanly.
        assert await asyncio.to_thread(node.process.wait, 20) in (0, -signal.SIGTERM)

        log_lines = [
            json.loads(line) for line in node.log.read_text().splitlines() if line.startswith("{")
        ]
        events = {line["event"] for line in log_lines}
        assert {"run started", "run finished", "request"} <= events
        started = next(line for line in log_lines if line["event"] == "run started")
        assert started["session_id"] == sid
        assert all("a long answer" not in json.dumps(line) for line in log_lines)

        await node.start()
        alice = await connect(node, http, sid, "alice")
        await alice.wait_until(lambda c: all_replies_settled(c, 2), timeout=30)
        by_id = {e["id"]: e for e in alice.entries()}
        cut = by_id[first["prompt_id"]]
        assert cut["status"] == "failed" and cut["reason_code"] == "server_shutdown"
        assert by_id[cut["reply_id"]]["status"] == "interrupted"
        assert by_id[second["prompt_id"]]["status"] == "done"
        await alice.close()
    finally:
        await http.aclose()


async def test_sigterm_closes_a_side_threads_socket_1001_too(
    tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    """docs/threads.md: 1001 means the server shuts down. A side-thread's socket was
    dropped without a close frame (1006) at SIGTERM while the session's got 1001, and a
    client decides by that code whether to come back."""
    node = ServerProcess(sqlite_url(tmp_path), tmp_path / "d", free_port())
    server_processes.append(node)
    await node.start()
    http, sid = await setup(node.base_url, {"bob": "editor"})
    try:
        bob = await connect(node, http, sid, "bob")
        opened = await http.post(f"/api/v1/sessions/{sid}/threads", json={"as_user": "bob"})
        assert opened.status_code == 201, opened.text
        token = (await http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": "bob"})).json()
        url = f"{node.ws_url}/ws/sessions/{sid}/threads/{opened.json()['thread_id']}"
        async with websockets.connect(f"{url}?token={token['token']}") as thread:
            await thread.send(encode_sync(SyncType.STEP1, Doc().get_state()))
            await asyncio.wait_for(thread.recv(), 10)  # its sync answer: attached
            assert node.process is not None
            node.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(websockets.ConnectionClosed):
                async with asyncio.timeout(10):
                    while True:
                        await thread.recv()
            closed = (thread.close_code, thread.close_reason)
            assert (await bob.wait_closed(timeout=10), *closed) == (
                1001,
                1001,
                "server shutting down",
            )
        assert await asyncio.to_thread(node.process.wait, 20) in (0, -signal.SIGTERM)
    finally:
        await http.aclose()


def _pg_ctl() -> list[str] | None:
    if shutil.which("pg_ctlcluster") is None or not os.path.isdir("/etc/postgresql"):
        return None
    version = sorted(os.listdir("/etc/postgresql"))[0]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


@pytest.mark.postgres
@pytest.mark.restarts_postgres  # restarts the server every PostgreSQL test shares: run alone
async def test_postgres_restart_mid_session(tmp_path: Path) -> None:
    ctl = _pg_ctl()
    if ctl is None or "127.0.0.1" not in POSTGRES_URL:
        message = "needs the local PostgreSQL cluster and pg_ctlcluster to restart it"
        if REQUIRE_POSTGRES:
            pytest.fail(message)
        pytest.skip(message)
    async with postgres_database(migrated=True) as url:
        settings = make_settings(url, tmp_path / "d", offline_token_delay_ms=0)
        async with serve_in_process(settings) as server:
            sid = await server.new_session({"alice": "editor"})
            alice = await server.connect(sid, "alice")
            acked = [
                await alice.command({"type": "prompt", "id": str(n), "text": f"p{n}"})
                for n in range(3)
            ]
            await alice.wait_until(lambda c: all_replies_settled(c, 3))

            await asyncio.to_thread(subprocess.run, [*ctl, "stop", "-m", "fast"], check=True)
            try:
                during = await alice.command({"type": "prompt", "id": "x", "text": "lost?"})
                assert during["type"] == "error" and during["code"] == "unavailable"
            finally:
                await asyncio.to_thread(subprocess.run, [*ctl, "start"], check=True)
            for _ in range(60):
                ready = await server.http.get("/readyz")
                if ready.status_code == 200:
                    break
                await asyncio.sleep(0.5)
            assert ready.status_code == 200

            # The server recovers by itself; a client may have to reconnect to resync.
            client = await server.connect(sid, "alice")
            after = await client.command({"type": "prompt", "id": "y", "text": "after"})
            assert after["type"] == "ack" and after["seq"] == 4
            await client.wait_until(lambda c: all_replies_settled(c, 4), timeout=30)
            ids = {e["id"] for e in client.entries()}
            assert {a["prompt_id"] for a in acked} <= ids
            assert all(e["status"] == "done" for e in client.entries())
