"""Side-thread refusals over the real app (REST and socket): each 403 is audited as the
session's own refusals are (review RV40-F4), and the session's cap on side-thread runs
never refuses a member with no run of their own, nor tells anyone how many of the others'
private runs are going (review RV41-F1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.fake_model import FakeModel

PRIVATE = "ZQX-private-text-4e1"  # never in an audit record

MODEL = FakeModel(lambda sent: [f"you asked: {sent.asked_text()[-40:]}"])


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    MODEL.requests.clear()
    MODEL.gate = asyncio.Event()
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings, MODEL) as running:
        yield running
    MODEL.gate.set()


async def member(server: RunningServer, sid: str, user: str) -> httpx.AsyncClient:
    token = await server.token(sid, user)
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(base_url=server.base_url, headers=headers)


async def refusals(server: RunningServer, sid: str) -> list[dict[str, Any]]:
    got = await server.http.get(f"/api/v1/sessions/{sid}/audit", params={"limit": 500})
    assert got.status_code == 200, got.text
    return [r for r in got.json()["records"] if r["kind"] == "refused"]


async def deny(server: RunningServer, sid: str, user: str, *denials: str) -> None:
    body = {"role": "editor", "denials": list(denials)}
    put = await server.http.put(f"/api/v1/sessions/{sid}/members/{user}", json=body)
    assert put.status_code == 200, put.text


async def test_every_side_thread_refusal_is_audited_without_its_text(
    server: RunningServer,
) -> None:
    sid = await server.new_session({"alice": "editor", "bob": "editor", "vic": "viewer"})
    base = f"/api/v1/sessions/{sid}"
    async with await member(server, sid, "bob") as bob, await member(server, sid, "vic") as vic:
        opened = await bob.post(f"{base}/threads", json={"title": "t"})
        thread_id = opened.json()["thread_id"]
        bob_socket = await server.connect(sid, "bob")
        tried: list[tuple[str, int | str]] = []

        async def refused(name: str, call: Any) -> None:
            before = len(await refusals(server, sid))
            answer = await call
            code = answer.status_code if isinstance(answer, httpx.Response) else answer["code"]
            records = (await refusals(server, sid))[before:]
            tried.append((name, code))
            assert len(records) == 1, (name, code, records)
            assert records[0]["actor"] in ("bob", "vic") and records[0]["data"]["reason"]
            assert PRIVATE not in str(records[0])

        await deny(server, sid, "bob", "prompt")
        asked = {"text": PRIVATE}
        await refused("REST open", bob.post(f"{base}/threads", json={"title": PRIVATE}))
        await refused("REST prompt", bob.post(f"{base}/threads/{thread_id}/prompts", json=asked))
        await refused("REST summary", bob.post(f"{base}/threads/{thread_id}/summary", json={}))
        frame = {"type": "thread_prompt", "id": "q", "thread_id": thread_id, "text": PRIVATE}
        await refused("socket prompt", bob_socket.command(frame))
        frame = {"type": "thread_open", "id": "o", "title": PRIVATE}
        await refused("socket open", bob_socket.command(frame))
        await deny(server, sid, "bob", "post_message")
        await refused("REST share", bob.post(f"{base}/threads/{thread_id}/share", json=asked))
        frame = {"type": "thread_share", "id": "s", "thread_id": thread_id, "text": PRIVATE}
        await refused("socket share", bob_socket.command(frame))
        await refused("viewer open", vic.post(f"{base}/threads", json={"title": "t"}))
        context = vic.get(f"{base}/context", params={"user_id": "alice"})
        await refused("another's context", context)
    rest, socket = 403, "forbidden"
    assert [code for _, code in tried] == [rest] * 3 + [socket] * 2 + [rest, socket, rest, rest]


async def hold_runs(client: httpx.AsyncClient, sid: str, runs: int) -> list[httpx.Response]:
    """``runs`` side-thread prompts of the member, each in a thread of its own, held by
    the model's gate while they run."""
    answers = []
    for n in range(runs):
        base = f"/api/v1/sessions/{sid}/threads"
        thread_id = (await client.post(base, json={"title": f"t{n}"})).json()["thread_id"]
        prompt = {"text": f"[wait] private question {n}"}
        answers.append(await client.post(f"{base}/{thread_id}/prompts", json=prompt))
    return answers


async def test_a_member_with_no_run_is_never_refused_for_the_others_private_runs(
    server: RunningServer,
) -> None:
    """Review RV41-F1: with alice and carol running 2 side-thread replies each (the
    session's 4), bob's first was ``thread_runs_busy`` "4 side-thread replies are being
    written in this session": polling told him when, and how many, the others asked the
    model privately. A member's first run is never refused for the others' runs; past it,
    the refusal tells only of their own."""
    members = {"alice": "editor", "bob": "editor", "carol": "editor"}
    sid = await server.new_session(members)
    async with (
        await member(server, sid, "alice") as alice,
        await member(server, sid, "carol") as carol,
        await member(server, sid, "bob") as bob,
    ):
        for held in (await hold_runs(alice, sid, 2), await hold_runs(carol, sid, 2)):
            assert [a.status_code for a in held] == [202, 202]
        [first, second] = await hold_runs(bob, sid, 2)
        assert first.status_code == 202, first.text
        # His second: the session's runs are taken, and one of them is his own.
        assert second.status_code == 429 and second.json()["error"]["code"] == "thread_runs_busy"
        told = second.json()["error"]["message"]
        assert "4" not in told and "5" not in told and "your" in told
        [third] = await hold_runs(alice, sid, 1)  # past her share: of hers alone
        assert third.json()["error"]["code"] == "thread_runs_busy" and "your share" in third.text
    assert MODEL.gate is not None
    MODEL.gate.set()
