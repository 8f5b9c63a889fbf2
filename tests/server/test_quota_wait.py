"""A prompt refused by a token quota says when the quota starts over (``retry_at``, the next
UTC midnight in milliseconds since the epoch), the same figure on every path a failure
reaches a client: the document's entries (a socket's, the Python SDK's), ``GET
…/prompts/{id}``, the transcript, the event stream and the webhooks; and after a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websockets
from parley_client import connect
from pycrdt import Array, Doc

from parley.session.yprotocol import SyncMessage, SyncType, decode_client_frame, encode_sync
from tests.conftest import make_settings, serve_in_process, sqlite_url
from tests.server.test_event_webhooks import FAST, receiving, subscribe, until
from tests.server.test_sse import completes, fields, prompt, stream

DAY_MS = 86_400_000


def next_midnight_ms(epoch_ms: float) -> int:
    return (int(epoch_ms) // DAY_MS + 1) * DAY_MS


async def test_a_quota_failure_tells_when_the_quota_starts_over_alike_everywhere(
    tmp_path: Path,
) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", **FAST)
    async with receiving() as receiver:
        async with serve_in_process(settings) as server:
            hook = await subscribe(
                server.http, receiver.url, events=["run.failed", "quota.exceeded"]
            )
            sid = await server.new_session({"alice": "editor"})
            token = await server.token(sid, "alice")
            async with stream(server.base_url, sid, token, "0") as events:
                await prompt(server, sid, "alice", "first")
                await events.until(completes)
                put = await server.http.put(
                    f"/api/v1/sessions/{sid}/quotas", json={"user_tokens_per_day": 1}
                )
                assert put.status_code == 200, put.text
                before_ms = time.time() * 1000
                second = (await prompt(server, sid, "alice", "second"))["prompt_id"]
                failed = await events.until(lambda e: e.event == "run_failed")
                after_ms = time.time() * 1000
            retry_at = fields(failed)["retry_at"]
            assert retry_at in {next_midnight_ms(before_ms), next_midnight_ms(after_ms)}
            assert fields(failed)["reason_code"] == "quota_exceeded"

            async def arrived() -> bool:
                return len(receiver.received) >= 2

            await until(arrived, "run.failed and quota.exceeded")
            told = {p["type"]: p["data"] for _, p in receiver.verified(hook["secret"])}
            assert told["run.failed"]["retry_at"] == told["quota.exceeded"]["retry_at"] == retry_at

            status = await server.http.get(f"/api/v1/sessions/{sid}/prompts/{second}")
            assert status.status_code == 200, status.text
            assert (status.json()["status"], status.json()["retry_at"]) == ("failed", retry_at)
            entries = {m["id"]: m for m in await server.transcript(sid)}
            reply_id = status.json()["reply_id"]
            assert entries[second]["retry_at"] == entries[reply_id]["retry_at"] == retry_at
            # Only a quota failure says a time: the prompt that was answered says none.
            assert [m["retry_at"] for m in entries.values() if m["status"] == "done"] == [
                None,
                None,
            ]

            async with connect(server.ws_url, sid, token) as alice:
                await alice.answer(second)
                shown = alice.entry(second)
                assert shown is not None and shown.retry_at == retry_at
                reply = alice.reply_to(second)
                assert reply is not None and reply.retry_at == retry_at

        # Stored with the ending: read after a restart, the same figure.
        async with serve_in_process(settings) as again:
            read: dict[str, Any] = (
                await again.http.get(f"/api/v1/sessions/{sid}/prompts/{second}")
            ).json()
            assert read["retry_at"] == retry_at


async def thread_document(url: str, done: Callable[[list[dict[str, Any]]], bool]) -> Any:
    """The turns of a side-thread's document as its socket syncs them, once ``done``."""
    doc: Doc[Any] = Doc()
    turns = doc.get("turns", type=Array)
    async with websockets.connect(url) as ws:
        await ws.send(encode_sync(SyncType.STEP1, doc.get_state()))
        async with asyncio.timeout(10):
            while not done(shown := turns.to_py() or []):
                message = decode_client_frame(await ws.recv())
                if isinstance(message, SyncMessage) and message.sync_type is not SyncType.STEP1:
                    doc.apply_update(message.payload)
    return shown


async def test_a_side_thread_turn_a_quota_failed_tells_when_alike_everywhere(
    tmp_path: Path,
) -> None:
    """A side-thread prompt a quota failed (and its reply) tell ``retry_at`` as a session
    prompt does: the thread's REST read, its ``thread`` frame (the Python SDK's), its
    document, and the same figure after a restart; a turn answered tells none."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"bob": "editor"})
        token = await server.token(sid, "bob")
        auth = {"Authorization": f"Bearer {token}"}
        base = f"/api/v1/sessions/{sid}/threads"
        opened = await server.http.post(base, json={"title": "t"}, headers=auth)
        assert opened.status_code == 201, opened.text
        thread_id = opened.json()["thread_id"]
        async with connect(server.ws_url, sid, token) as bob:
            asked = await bob.thread_prompt(thread_id, "first")
            first = await bob.thread_answer(thread_id)
            assert first is not None and first["id"] == asked.data["reply_id"]
            assert (first["status"], first["retry_at"]) == ("done", None)
            put = await server.http.put(f"{base[:-8]}/quotas", json={"user_tokens_per_day": 1})
            assert put.status_code == 200, put.text
            before_ms = time.time() * 1000
            asked = await bob.thread_prompt(thread_id, "second")
            framed = await bob.thread_answer(thread_id)
            after_ms = time.time() * 1000
        assert framed is not None and framed["id"] == asked.data["reply_id"]
        assert framed["reason_code"] == "quota_exceeded"
        retry_at = framed["retry_at"]
        assert retry_at in {next_midnight_ms(before_ms), next_midnight_ms(after_ms)}
        read = await server.http.get(f"{base}/{thread_id}", headers=auth)
        assert read.status_code == 200, read.text
        told = [(t["kind"], t["status"], t["retry_at"]) for t in read.json()["turns"]]
        assert told == [
            ("prompt", "done", None),
            ("reply", "done", None),
            ("prompt", "failed", retry_at),
            ("reply", "failed", retry_at),
        ]
        url = f"{server.ws_url}/ws/sessions/{sid}/threads/{thread_id}?token={token}"
        shown = await thread_document(url, lambda turns: len(turns) == 4)
        assert [t.get("retry_at") for t in shown] == [None, None, retry_at, retry_at]
        assert "retry_at" not in shown[0]  # absent where no time is told, as on an entry

    # Stored with the turns: read after a restart, the same figure on each path.
    async with serve_in_process(settings) as again:
        read = await again.http.get(f"{base}/{thread_id}", headers=auth)
        assert [t["retry_at"] for t in read.json()["turns"]] == [None, None, retry_at, retry_at]
        url = f"{again.ws_url}/ws/sessions/{sid}/threads/{thread_id}?token={token}"
        shown = await thread_document(url, lambda turns: len(turns) == 4)
        assert [t.get("retry_at") for t in shown] == [None, None, retry_at, retry_at]
