"""Turns that no longer fit are summarised by the model, stored, reused and extended."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from server.providers.offline import OfflineProvider
from session.model import ModelEvent, ModelRequest
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.fake_model import Answer, FakeModel, Sent, call
from tests.yclient import YClient, all_replies_settled

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


def small_window(tmp_path: Path, url: str) -> dict[str, object]:
    return {
        "context_window_tokens": 900,
        "max_output_tokens": 150,
        "summary_min_tokens": 120,
        "summary_max_output_tokens": 200,
        "commands_burst": 500,
        "commands_per_second": 500.0,
        "user_commands_per_second": 500.0,
    }


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


async def wait_for_summaries(server: RunningServer, sid: str, count: int) -> dict[str, object]:
    preview: dict[str, object] = {}
    for _ in range(500):
        response = await server.http.get(
            f"/api/v1/sessions/{sid}/context", params={"user_id": "alice"}
        )
        preview = response.json()
        summary = preview["summary"]
        if isinstance(summary, dict) and summary["id"] and len(preview_ids(preview)) >= count:
            return preview
        await asyncio.sleep(0.02)
    raise AssertionError(f"no summary after waiting: {preview}")


def preview_ids(preview: dict[str, object]) -> set[str]:
    excluded = preview["excluded"]
    assert isinstance(excluded, list)
    return {x["reason"] for x in excluded if x["reason"].startswith("summarised in")}


async def test_old_turns_are_summarised_reused_and_extended(tmp_path: Path) -> None:
    provider = RecordingOffline()
    url = sqlite_url(tmp_path)
    settings = make_settings(url, tmp_path / "d", **small_window(tmp_path, url))
    async with serve_in_process(settings, provider) as server:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        alice = await server.connect(sid, "alice")
        bob = await server.connect(sid, "bob")
        await chat(bob, 0, 40)
        await ask(server, alice, provider, 1)
        preview = await wait_for_summaries(server, sid, 1)

        summaries = provider.calls("summary")
        assert summaries, "a summary call was made"
        first_call = summaries[0]
        assert first_call.issuers == ()  # nobody's prompt: a separate, audited call
        assert "Update 0 on billing" in first_call.messages[0].content
        summary = preview["summary"]
        assert isinstance(summary, dict)
        assert "Summary of the conversation up to message #" in str(preview["system"])
        # The newest summarised turn lives on in the summary (the offline model's summary
        # keeps the latest lines that fit its output limit).
        assert f"#{summary['to_seq']} bob: Update" in str(preview["system"])
        assert preview["tokens"] <= preview["budget"]

        # The next run is given the stored summary, and not the turns it covers.
        await ask(server, alice, provider, 2)
        run = provider.calls("reply")[-1]
        assert "Summary of the conversation up to message #" in run.system
        assert all("Update 0 on billing" not in m.content for m in run.messages)

        # More talk: the summary is extended, not rebuilt; the new one covers the old.
        calls_before = len(provider.calls("summary"))
        await chat(bob, 40, 40)
        await ask(server, alice, provider, 3)
        for _ in range(500):
            if len(provider.calls("summary")) > calls_before:
                break
            await asyncio.sleep(0.02)
        extension = provider.calls("summary")[calls_before]
        assert extension.messages[0].content.startswith("Previous summary:\n")
        assert "Update 0 on billing" not in extension.messages[0].content.split("New messages:")[1]

    # After a restart the summaries come back from the database.
    async with serve_in_process(settings, provider) as server:
        calls = len(provider.calls("summary"))
        preview = (
            await server.http.get(f"/api/v1/sessions/{sid}/context", params={"user_id": "alice"})
        ).json()
        assert preview["summary"] is not None
        assert preview["summary"]["to_seq"] > summary["to_seq"]
        assert len(provider.calls("summary")) == calls  # reused, not remade


async def test_summaries_can_be_turned_off(tmp_path: Path) -> None:
    provider = RecordingOffline()
    url = sqlite_url(tmp_path)
    settings = make_settings(url, tmp_path / "d", summaries=False, **small_window(tmp_path, url))
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


async def test_a_summary_is_made_only_from_what_every_member_may_read(tmp_path: Path) -> None:
    def script(sent: Sent) -> Answer:
        if sent.purpose == "summary":
            return ["earlier: updates on billing and deploys"]
        if "launch" in sent.asked_text():
            return [call("search_documents", {"query": "launch code"})]
        return ["noted"]

    provider = FakeModel(script)
    url = sqlite_url(tmp_path)
    settings = make_settings(url, tmp_path / "d", **small_window(tmp_path, url))
    async with serve_in_process(settings, provider) as server:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        made = await server.http.post(
            f"/api/v1/sessions/{sid}/documents",
            json={
                "title": "Vault",
                "text": "The launch code is 7731.",
                "readers": {"users": ["bob"]},
            },
        )
        assert made.status_code == 201, made.text
        bob = await server.connect(sid, "bob")
        await bob.command({"type": "prompt", "id": "b", "text": "what is the launch code?"})
        await bob.wait_until(lambda c: all_replies_settled(c, 1))
        assert "7731" in provider.requests_for("bob")[-1].everything()
        await chat(bob, 0, 50)  # bob's restricted answer falls out of the window
        await bob.command({"type": "prompt", "id": "q", "text": "status?"})
        for _ in range(500):
            if [r for r in provider.requests if r.purpose == "summary"]:
                break
            await asyncio.sleep(0.02)
        summaries = [r for r in provider.requests if r.purpose == "summary"]
        assert summaries, "a summary call was made"
        for request in summaries:
            assert "7731" not in request.everything()
            assert "Update 0 on billing" in summaries[0].everything()
