"""A prompt refused by a token quota says when the quota starts over (``retry_at``, the next
UTC midnight in milliseconds since the epoch), the same figure on every path a failure
reaches a client: the document's entries (a socket's, the Python SDK's), ``GET
…/prompts/{id}``, the transcript, the event stream and the webhooks; and after a restart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from parley_client import connect

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
