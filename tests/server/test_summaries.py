"""Summaries seen through the app: with summaries off, the REST context preview shows the
turns over budget and no summary. (How turns are summarised, stored, reused, extended and
kept to what every member may read is tested in a room on the in-memory store:
``tests/server/runtime/test_summaries.py``.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from parley.server.providers.offline import OfflineProvider
from parley.session.model import ModelEvent, ModelRequest
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.server.runtime.test_summaries import SMALL_WINDOW
from tests.yclient import YClient

TOPICS = ["billing", "deploys", "search", "onboarding", "latency", "alerts", "exports"]


class RecordingOffline:
    """The built-in offline model, with every request it was given kept for the test."""

    name = "parley-offline"

    def __init__(self) -> None:
        self.model = OfflineProvider(token_delay_s=0)
        self.requests: list[ModelRequest] = []

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        self.requests.append(request)
        return self.model.stream(request)

    def calls(self, purpose: str) -> list[ModelRequest]:
        return [r for r in self.requests if r.purpose == purpose]


async def chat(client: YClient, start: int, count: int) -> None:
    for i in range(start, start + count):
        topic = TOPICS[i % len(TOPICS)]
        text = f"Update {i} on {topic}: ticket PRJ-{1000 + i} is owned by team {i % 5} now."
        await client.command({"type": "message", "id": f"m{i}", "text": text})


async def ask(server: RunningServer, client: YClient, provider: RecordingOffline, n: int) -> None:
    before = len(provider.calls("reply"))
    ack = await client.command({"type": "prompt", "id": f"q{n}", "text": f"status {n}?"})
    assert ack["type"] == "ack"
    for _ in range(500):
        if len(provider.calls("reply")) > before:
            break
        await asyncio.sleep(0.01)
    await client.wait_until(
        lambda c: any(
            e["kind"] == "reply" and e["status"] == "done" and ack["prompt_id"] in e["answers"]
            for e in c.entries()
        )
    )


async def test_summaries_can_be_turned_off(tmp_path: Path) -> None:
    provider = RecordingOffline()
    url = sqlite_url(tmp_path)
    settings = make_settings(url, tmp_path / "d", summaries=False, **SMALL_WINDOW)
    async with serve_in_process(settings, provider) as server:
        sid = await server.new_session({"alice": "editor"})
        alice = await server.connect(sid, "alice")
        await chat(alice, 0, 40)
        await ask(server, alice, provider, 1)
        # A later run is given the over-budget turns' absence, never a summary of them.
        await ask(server, alice, provider, 2)
        later = provider.calls("reply")[-1]
        assert "[Summary of the conversation" not in later.system
        assert provider.calls("summary") == []
        preview = (
            await server.http.get(f"/api/v1/sessions/{sid}/context", params={"user_id": "alice"})
        ).json()
        assert preview["summary"] is None
        assert any(x["reason"] == "over budget" for x in preview["excluded"])
