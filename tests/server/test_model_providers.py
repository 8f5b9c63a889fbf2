"""Real model providers through the real server: Parley streams from a local HTTP upstream
that speaks OpenAI's or Anthropic's wire format, and members watch over WebSockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from parley.server.providers.registry import open_models
from parley.server.settings import ModelSpec
from parley.session.errors import MissingApiKey
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.fake_upstream import FakeUpstream, Reply, anthropic_stream, openai_stream
from tests.yclient import YClient, all_replies_settled

OPENAI_KEY = "sk-openai-RECOGNISABLE-5f3a9c"
ANTHROPIC_KEY = "sk-ant-RECOGNISABLE-77d1e0"


@pytest.fixture(autouse=True)
def api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_TEST_OPENAI_KEY", OPENAI_KEY)
    monkeypatch.setenv("PARLEY_TEST_ANTHROPIC_KEY", ANTHROPIC_KEY)


@contextlib.asynccontextmanager
async def parley_with(
    upstream: FakeUpstream,
    tmp_path: Path,
    database_url: str | None = None,
    default: str = "gpt",
    **overrides: Any,
) -> AsyncIterator[RunningServer]:
    """Parley with two configured models, both served by ``upstream``."""
    models = [
        ModelSpec(
            name="gpt",
            kind="openai",
            base_url=upstream.base_url + "/v1",
            api_key_env="PARLEY_TEST_OPENAI_KEY",
            model="gpt-4o-mini",
            context_window_tokens=8000,
            reserved_output_tokens=500,
        ),
        ModelSpec(
            name="claude",
            kind="anthropic",
            base_url=upstream.base_url,
            api_key_env="PARLEY_TEST_ANTHROPIC_KEY",
            model="claude-sonnet-4-5",
            context_window_tokens=200_000,
            reserved_output_tokens=4000,
        ),
    ]
    values: dict[str, Any] = {
        "models": models,
        "default_model": default,
        "provider_retry_base_s": 0.01,
        **overrides,
    }
    settings = make_settings(database_url or sqlite_url(tmp_path), tmp_path / "d", **values)
    async with serve_in_process(settings) as server:
        yield server


async def ask(server: RunningServer, text: str = "hello?") -> tuple[str, YClient]:
    sid = await server.new_session({"alice": "editor"})
    alice = await server.connect(sid, "alice")
    ack = await alice.command({"type": "prompt", "id": "p1", "text": text})
    assert ack["type"] == "ack", ack
    return sid, alice


async def settled(client: YClient, prompts: int = 1) -> list[dict[str, Any]]:
    await client.wait_until(lambda c: all_replies_settled(c, prompts), timeout=20)
    return client.entries()


async def test_openai_reply_streams_into_the_transcript(database_url: str, tmp_path: Path) -> None:
    upstream = FakeUpstream([Reply(pieces=openai_stream(["Hello", " Alice", "!"], usage=(31, 3)))])
    async with upstream.running(), parley_with(upstream, tmp_path, database_url) as server:
        _, alice = await ask(server, "hello?")
        prompt, reply = await settled(alice)
    assert prompt["status"] == "done" and reply["status"] == "done"
    assert reply["content"] == "Hello Alice!"
    (sent,) = upstream.exchanges
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    body = sent.json()
    assert body["model"] == "gpt-4o-mini" and body["max_tokens"] == 500
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][-1] == {
        "role": "user",
        "content": "[alice asks you]\nhello?",
        "name": "alice",
    }


async def test_anthropic_reply_streams_into_the_transcript(tmp_path: Path) -> None:
    upstream = FakeUpstream([Reply(pieces=anthropic_stream(["Bonjour", " Alice"]))])
    async with upstream.running(), parley_with(upstream, tmp_path, default="claude") as server:
        _, alice = await ask(server, "salut")
        _, reply = await settled(alice)
    assert reply["status"] == "done" and reply["content"] == "Bonjour Alice"
    (sent,) = upstream.exchanges
    assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == ANTHROPIC_KEY
    body = sent.json()
    assert body["model"] == "claude-sonnet-4-5" and body["max_tokens"] == 4000
    assert body["system"]
    assert body["messages"][-1]["content"][-2:] == [
        {"type": "text", "text": "[alice asks you]"},
        {"type": "text", "text": "salut"},
    ]


async def test_a_dropped_stream_fails_the_prompt_and_keeps_the_partial_text(
    tmp_path: Path,
) -> None:
    pieces = openai_stream(["Half", " a", " reply", " and", " more"])[:4]
    upstream = FakeUpstream([Reply(pieces=pieces, end="drop"), Reply(pieces=openai_stream(["x"]))])
    async with upstream.running(), parley_with(upstream, tmp_path) as server:
        _, alice = await ask(server)
        prompt, reply = await settled(alice)
    assert prompt["status"] == "failed" and reply["status"] == "failed"
    assert reply["content"] == "Half a reply"
    assert prompt["reason_code"] == "provider_error"
    assert prompt["reason"].startswith("model 'gpt' connection failed")
    assert len(upstream.exchanges) == 1  # no silent second answer after tokens streamed


async def test_429_with_retry_after_then_success(tmp_path: Path) -> None:
    limited = Reply(
        429,
        [b'{"error": {"message": "Rate limit reached for requests", "type": "requests"}}'],
        headers={"content-type": "application/json", "retry-after": "1"},
    )
    upstream = FakeUpstream([limited, Reply(pieces=openai_stream(["after", " waiting"]))])
    async with upstream.running(), parley_with(upstream, tmp_path) as server:
        started = time.monotonic()
        _, alice = await ask(server)
        _, reply = await settled(alice)
        waited = time.monotonic() - started
    assert reply["status"] == "done" and reply["content"] == "after waiting"
    assert len(upstream.exchanges) == 2
    assert waited >= 1.0, "Retry-After: 1 was honoured"
    print(f"\n429 + Retry-After 1 s, then the reply: {waited:.2f} s")


async def test_500_before_the_first_token_then_success(tmp_path: Path) -> None:
    broken = Reply(500, [b"upstream exploded"], headers={"content-type": "text/plain"})
    upstream = FakeUpstream([broken, broken, Reply(pieces=anthropic_stream(["third", " time"]))])
    async with upstream.running(), parley_with(upstream, tmp_path, default="claude") as server:
        _, alice = await ask(server)
        _, reply = await settled(alice)
    assert reply["status"] == "done" and reply["content"] == "third time"
    assert len(upstream.exchanges) == 3


async def test_too_many_failures_fail_the_prompt_with_the_upstream_reason(tmp_path: Path) -> None:
    broken = Reply(503, [b'{"error": {"message": "no capacity"}}'])
    upstream = FakeUpstream([broken, broken])
    async with upstream.running(), parley_with(upstream, tmp_path, provider_max_attempts=2) as srv:
        _, alice = await ask(srv)
        prompt, reply = await settled(alice)
    assert prompt["status"] == "failed" and reply["content"] == ""
    assert prompt["reason_code"] == "provider_error"
    assert prompt["reason"] == "model 'gpt' answered 503: no capacity"
    assert len(upstream.exchanges) == 2


async def test_cancelling_a_slow_stream_closes_the_upstream_connection(tmp_path: Path) -> None:
    words = [f"w{n} " for n in range(400)]
    upstream = FakeUpstream([Reply(pieces=openai_stream(words), delay_s=0.02)])
    async with upstream.running(), parley_with(upstream, tmp_path) as server:
        _, alice = await ask(server)
        await alice.wait_until(
            lambda c: any(e["kind"] == "reply" and len(e["content"]) > 20 for e in c.entries())
        )
        prompt_id = alice.entries()[0]["id"]
        sent = time.monotonic()
        cancelled = await alice.command({"type": "cancel", "id": "c", "prompt_id": prompt_id})
        assert cancelled["type"] == "ack"
        exchange = upstream.exchanges[0]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await exchange.hung_up.wait()
        assert exchange.hung_up_at is not None, "the upstream saw the connection close"
        elapsed = exchange.hung_up_at - sent
        print(f"\ncancel to upstream disconnect: {elapsed * 1000:.1f} ms")
        assert elapsed < 1.0
        prompt, reply = await settled(alice)
    assert prompt["status"] == "cancelled" and reply["content"].startswith("w0 w1 ")
    assert len(reply["content"]) < len("".join(words))


async def test_api_keys_appear_nowhere(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = json.dumps(
        {"error": {"message": f"Incorrect API key provided: {OPENAI_KEY}", "type": "auth"}}
    ).encode()
    upstream = FakeUpstream([Reply(401, [echo], headers={"content-type": "application/json"})])
    async with upstream.running(), parley_with(upstream, tmp_path) as server:
        sid, alice = await ask(server)
        prompt, _ = await settled(alice)
        transcript = json.dumps(await server.transcript(sid))
        session = (await server.http.get(f"/api/v1/sessions/{sid}")).text
    assert prompt["reason_code"] == "provider_error"
    assert prompt["reason"].startswith("model 'gpt' answered 401: Incorrect API")
    assert upstream.exchanges[0].headers["authorization"] == f"Bearer {OPENAI_KEY}"  # it was sent
    for text in (prompt["reason"], transcript, session, caplog.text):
        assert OPENAI_KEY not in text and ANTHROPIC_KEY not in text
    assert "[redacted]" in prompt["reason"]
    assert "model call failed" in caplog.text  # the failure was logged, without the key


async def test_the_session_model_is_chosen_over_rest(tmp_path: Path) -> None:
    upstream = FakeUpstream(
        [Reply(pieces=openai_stream(["from gpt"])), Reply(pieces=anthropic_stream(["from claude"]))]
    )
    async with upstream.running(), parley_with(upstream, tmp_path) as server:
        sid = await server.new_session({"alice": "editor"})
        url = f"/api/v1/sessions/{sid}"
        assert (await server.http.get(url)).json()["model"] is None
        preview = await server.http.get(f"{url}/context", params={"user_id": "alice"})
        assert preview.json()["budget"] == 8000 - 500
        unknown = await server.http.patch(url, json={"model": "gpt-9"})
        assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "invalid"
        assert "claude, gpt" in unknown.json()["error"]["message"]
        alice = await server.connect(sid, "alice")
        await alice.command({"type": "prompt", "id": "1", "text": "one"})
        await settled(alice, 1)
        chosen = await server.http.patch(url, json={"model": "claude"})
        assert chosen.status_code == 200 and chosen.json()["model"] == "claude"
        preview = await server.http.get(f"{url}/context", params={"user_id": "alice"})
        assert preview.json()["budget"] == 200_000 - 4000
        await alice.command({"type": "prompt", "id": "2", "text": "two"})
        entries = await settled(alice, 2)
        back = await server.http.patch(url, json={"model": None})
        assert back.json()["model"] is None
    replies = [(e["author"], e["content"]) for e in entries if e["kind"] == "reply"]
    assert replies == [("gpt", "from gpt"), ("claude", "from claude")]
    assert [x.path for x in upstream.exchanges] == ["/v1/chat/completions", "/v1/messages"]


async def test_a_model_naming_an_unset_key_variable_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PARLEY_TEST_OPENAI_KEY")
    spec = ModelSpec(
        name="gpt",
        kind="openai",
        base_url="http://127.0.0.1:9",
        model="m",
        api_key_env="PARLEY_TEST_OPENAI_KEY",
    )
    settings = make_settings(sqlite_url(tmp_path), tmp_path, models=[spec])
    with pytest.raises(MissingApiKey, match="PARLEY_TEST_OPENAI_KEY is not set"):
        async with open_models(settings):
            pass


async def test_usage_is_recorded_per_issuer_and_shown_over_rest(
    database_url: str, tmp_path: Path
) -> None:
    upstream = FakeUpstream(
        [
            Reply(pieces=openai_stream(["one"], usage=(31, 3))),
            Reply(pieces=anthropic_stream(["two"], usage=(40, 7))),
        ]
    )
    async with upstream.running(), parley_with(upstream, tmp_path, database_url) as server:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        alice = await server.connect(sid, "alice")
        bob = await server.connect(sid, "bob")
        await alice.command({"type": "prompt", "id": "1", "text": "one"})
        await settled(alice, 1)
        await server.http.patch(f"/api/v1/sessions/{sid}", json={"model": "claude"})
        await bob.command({"type": "prompt", "id": "1", "text": "two"})
        await settled(bob, 2)
        url = f"/api/v1/sessions/{sid}/usage"
        usage = (await server.http.get(url)).json()
        only_bob = (await server.http.get(url, params={"user_id": "bob"})).json()
        long_ago = (await server.http.get(url, params={"day": "2000-01-01"})).json()
        not_a_day = await server.http.get(url, params={"day": "2025-13-45"})
        unknown = await server.http.get("/api/v1/sessions/nope/usage")
    assert usage["input_tokens"] == 71 and usage["output_tokens"] == 10
    assert usage["users"] == [
        {"user_id": "alice", "input_tokens": 31, "output_tokens": 3, "calls": 1},
        {"user_id": "bob", "input_tokens": 40, "output_tokens": 7, "calls": 1},
    ]
    assert usage["day"] == time.strftime("%Y-%m-%d", time.gmtime())
    assert usage["quotas"] == {"session_tokens_per_day": None, "user_tokens_per_day": None}
    assert [u["user_id"] for u in only_bob["users"]] == ["bob"] and only_bob["input_tokens"] == 40
    assert long_ago["users"] == [] and long_ago["input_tokens"] == 0
    assert not_a_day.status_code == 422 and not_a_day.json()["error"]["code"] == "invalid"
    assert unknown.status_code == 404


async def test_a_prompt_over_quota_fails_before_any_model_call(tmp_path: Path) -> None:
    upstream = FakeUpstream([Reply(pieces=openai_stream([w], usage=(31, 3))) for w in "ab"])
    async with upstream.running(), parley_with(upstream, tmp_path) as server:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        quotas = f"/api/v1/sessions/{sid}/quotas"
        alice = await server.connect(sid, "alice")
        bob = await server.connect(sid, "bob")
        await alice.command({"type": "prompt", "id": "1", "text": "first"})
        await settled(alice, 1)
        put = await server.http.put(quotas, json={"user_tokens_per_day": 30})
        assert put.json() == {"session_tokens_per_day": None, "user_tokens_per_day": 30}
        await alice.command({"type": "prompt", "id": "2", "text": "second"})
        await settled(alice, 2)
        await bob.command({"type": "prompt", "id": "1", "text": "bob's first"})
        await settled(bob, 3)
        await server.http.put(quotas, json={"session_tokens_per_day": 60})
        await bob.command({"type": "prompt", "id": "2", "text": "bob's second"})
        entries = await settled(bob, 4)
        bad = await server.http.put(quotas, json={"user_tokens_per_day": 0})
        stored = (await server.http.get(quotas)).json()
    replies = [e for e in entries if e["kind"] == "reply"]
    prompts = [e for e in entries if e["kind"] == "prompt"]
    assert [p["status"] for p in prompts] == ["done", "failed", "done", "failed"]
    assert prompts[1]["reason_code"] == prompts[3]["reason_code"] == "quota_exceeded"
    assert prompts[1]["reason"] == "alice used 34 of their 30 tokens today"
    assert prompts[3]["reason"] == "the session used 68 of its 60 tokens today"
    assert [r["content"] for r in replies] == ["a", "", "b", ""]
    assert len(upstream.exchanges) == 2  # the refused prompts never reached the model
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid"
    assert stored == {"session_tokens_per_day": 60, "user_tokens_per_day": None}
