"""Issue 15: the token lifecycle, over real REST and sockets.

Removing a member ends every token issued to them (adding them back does not revive one),
one token can be revoked by its id, and either way the member's sockets close with a
reason and their running and waiting prompts stop with ``reason_code`` ``member_removed`` /
``token_revoked``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer, make_settings, serve_in_process
from tests.fake_model import FakeModel, Forever
from tests.yclient import YClient


@pytest.fixture
async def endless(database_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    settings = make_settings(database_url, tmp_path / "data")
    # A model that streams a word and then never finishes: a reply runs until stopped.
    model = FakeModel(lambda sent: ["thinking ", Forever()])
    async with serve_in_process(settings, model) as running:
        yield running


async def _issue(server: RunningServer, sid: str, user: str) -> tuple[str, str]:
    response = await server.http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": user})
    assert response.status_code == 201, response.text
    body = response.json()
    return str(body["token"]), str(body["jti"])


async def _socket(server: RunningServer, sid: str, token: str) -> YClient:
    client = await YClient.connect(server.ws_url, sid, token)
    server.clients.append(client)
    async with asyncio.timeout(10):
        await client.synced.wait()
    return client


async def _status(server: RunningServer, sid: str, token: str) -> int:
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}
    ) as member:
        return (await member.get(f"/api/v1/sessions/{sid}")).status_code


def _entry(client: YClient, entry_id: str) -> dict[str, Any]:
    return next(e for e in client.entries() if e["id"] == entry_id)


async def _running_and_waiting(alice: YClient, watcher: YClient) -> tuple[str, str]:
    """Alice's first prompt streaming (it never ends by itself), her second waiting."""
    running = str((await alice.command({"type": "prompt", "id": "p1", "text": "go"}))["prompt_id"])
    await watcher.wait_until(
        lambda c: any(e["kind"] == "reply" and str(e["content"]) for e in c.entries())
    )
    waiting = str(
        (await alice.command({"type": "prompt", "id": "p2", "text": "next"}))["prompt_id"]
    )
    await watcher.wait_until(lambda c: any(e["id"] == waiting for e in c.entries()))
    return running, waiting


def _stopped(client: YClient, prompt_ids: tuple[str, ...], code: str) -> bool:
    entries = {e["id"]: e for e in client.entries()}
    prompts = [entries.get(p) for p in prompt_ids]
    replies = [e for e in entries.values() if e["kind"] == "reply"]
    return (
        all(p is not None and p["status"] == "failed" for p in prompts)
        and all(p["reason_code"] == code for p in prompts if p is not None)
        and all(r["status"] == "failed" for r in replies)
    )


async def test_removing_a_member_ends_their_tokens_sockets_and_prompts(
    endless: RunningServer,
) -> None:
    server = endless
    sid = await server.new_session({"alice": "editor", "olga": "owner"})
    old_token, _ = await _issue(server, sid, "alice")
    alice = await _socket(server, sid, old_token)
    watcher = await server.connect(sid, "olga")
    prompts = await _running_and_waiting(alice, watcher)

    removed = await server.http.delete(f"/api/v1/sessions/{sid}/members/alice")
    assert removed.status_code == 204, removed.text
    assert await alice.wait_closed() == 4403
    assert alice.ws.close_reason is not None and alice.ws.close_reason.startswith("removed:")
    await watcher.wait_until(lambda c: _stopped(c, prompts, "member_removed"))
    transcript = {e["id"]: e for e in await server.transcript(sid)}
    assert all(transcript[p]["reason_code"] == "member_removed" for p in prompts)

    # Added back: the old token stays dead on REST and on a socket; a new one works.
    readded = await server.http.put(
        f"/api/v1/sessions/{sid}/members/alice", json={"role": "editor"}
    )
    assert readded.status_code == 200, readded.text
    assert await _status(server, sid, old_token) == 401
    again = await YClient.connect(server.ws_url, sid, old_token)
    server.clients.append(again)
    assert await again.wait_closed() == 4401
    new_token, _ = await _issue(server, sid, "alice")
    assert await _status(server, sid, new_token) == 200
    fresh = await _socket(server, sid, new_token)
    ack = await fresh.command({"type": "message", "id": "m1", "text": "back"})
    assert ack["type"] == "ack", ack


async def test_revoking_one_token_closes_its_sockets_and_stops_its_members_prompts(
    endless: RunningServer,
) -> None:
    server = endless
    sid = await server.new_session({"alice": "editor", "olga": "owner"})
    revoked_token, jti = await _issue(server, sid, "alice")
    other_token, _ = await _issue(server, sid, "alice")
    alice = await _socket(server, sid, revoked_token)
    other = await _socket(server, sid, other_token)
    watcher = await server.connect(sid, "olga")
    prompts = await _running_and_waiting(alice, watcher)

    revoke = await server.http.delete(f"/api/v1/sessions/{sid}/tokens/{jti}")
    assert revoke.status_code == 204, revoke.text
    assert await alice.wait_closed() == 4401
    assert alice.ws.close_reason is not None and alice.ws.close_reason.startswith("revoked:")
    await watcher.wait_until(lambda c: _stopped(c, prompts, "token_revoked"))
    # Only that token is dead: the member's other token and socket still work.
    assert await _status(server, sid, revoked_token) == 401
    assert await _status(server, sid, other_token) == 200
    ack = await other.command({"type": "message", "id": "m1", "text": "still here"})
    assert ack["type"] == "ack", ack
    reopened = await YClient.connect(server.ws_url, sid, revoked_token)
    server.clients.append(reopened)
    assert await reopened.wait_closed() == 4401

    again = await server.http.delete(f"/api/v1/sessions/{sid}/tokens/{jti}")
    assert again.status_code == 204, again.text
    unknown = await server.http.delete(f"/api/v1/sessions/{sid}/tokens/nosuchtoken")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    audit = await server.http.get(f"/api/v1/sessions/{sid}/audit?kind=token")
    revoked = [r["data"] for r in audit.json()["records"]]
    # Revoked again: the same 204, and no second record (review FX36).
    assert revoked == [{"revoked": jti, "user_id": "alice"}]


async def test_only_the_admin_revokes_tokens(server: RunningServer) -> None:
    sid = await server.new_session({"olga": "owner", "alice": "editor"})
    _, jti = await _issue(server, sid, "alice")
    olga, _ = await _issue(server, sid, "olga")
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {olga}"}
    ) as owner:
        refused = await owner.delete(f"/api/v1/sessions/{sid}/tokens/{jti}")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
