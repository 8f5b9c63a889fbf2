"""Real model providers under the session's rooms: Parley streams from a local HTTP upstream
that speaks OpenAI's or Anthropic's wire format into a room on a store (the real SQLite or
PostgreSQL one where the database matters), and the REST handlers read and change what the
app would serve. No app, no member socket: the wire to members is covered by
``tests/server/test_ws.py``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from parley.server.http import context as context_api
from parley.server.http import sessions as sessions_api
from parley.server.http import usage as usage_api
from parley.server.http.models import SessionPatch
from parley.server.http.resource_models import QuotasPut
from parley.server.http.rest import ADMIN
from parley.server.providers.registry import open_models
from parley.server.settings import ModelSpec
from parley.session.commands import CancelCommand, PromptCommand
from parley.session.entries import Entry
from parley.session.errors import InvalidInput, MissingApiKey, NotFound
from tests.conftest import make_settings, sqlite_url
from tests.fake_upstream import FakeUpstream, Reply, anthropic_stream, openai_stream
from tests.server.runtime.backend import Backend, backend, rest_body, sql_store
from tests.server.runtime.harness import MemorySession, memory_settings

OPENAI_KEY = "sk-openai-RECOGNISABLE-5f3a9c"
ANTHROPIC_KEY = "sk-ant-RECOGNISABLE-77d1e0"


@pytest.fixture(autouse=True)
def api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_TEST_OPENAI_KEY", OPENAI_KEY)
    monkeypatch.setenv("PARLEY_TEST_ANTHROPIC_KEY", ANTHROPIC_KEY)


@contextlib.asynccontextmanager
async def parley_with(
    upstream: FakeUpstream,
    database_url: str,
    default: str = "gpt",
    **overrides: Any,
) -> AsyncIterator[Backend]:
    """Parley's rooms with two configured models, both served by ``upstream``, on the real
    store of ``database_url`` (the REST handlers need the SQL store)."""
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
    settings = memory_settings(
        models=models, default_model=default, provider_retry_base_s=0.01, **overrides
    )
    async with sql_store(database_url) as store, backend(settings, store=store) as parley:
        yield parley


async def ask(parley: Backend, text: str = "hello?") -> tuple[str, MemorySession]:
    sid = await parley.new_session({"alice": "editor"})
    alice = await parley.session(sid)
    ack = await alice.send("alice", PromptCommand("p1", text))
    assert ack["type"] == "ack", ack
    return sid, alice


async def settled(s: MemorySession, prompts: int = 1) -> list[Entry]:
    """The transcript once ``prompts`` prompts are final and nothing runs."""
    await s.until(lambda s: len([e for e in s.room.doc.entries() if e.kind == "prompt"]) >= prompts)
    await s.settled(*(e.id for e in s.room.doc.entries() if e.kind == "prompt"))
    return s.room.doc.entries()


async def test_openai_reply_streams_into_the_transcript(database_url: str) -> None:
    upstream = FakeUpstream([Reply(pieces=openai_stream(["Hello", " Alice", "!"], usage=(31, 3)))])
    async with upstream.running(), parley_with(upstream, database_url) as parley:
        sid, alice = await ask(parley, "hello?")
        prompt, reply = await settled(alice)
        stored = await parley.store.entries_with_status(sid, ["done"])
    assert prompt.status == "done" and reply.status == "done"
    assert reply.content == "Hello Alice!"
    assert [r.id for r in stored] == [prompt.id]  # the database's status too
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
    async with (
        upstream.running(),
        parley_with(upstream, sqlite_url(tmp_path), default="claude") as parley,
    ):
        _, alice = await ask(parley, "salut")
        _, reply = await settled(alice)
    assert reply.status == "done" and reply.content == "Bonjour Alice"
    (sent,) = upstream.exchanges
    assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == ANTHROPIC_KEY
    body = sent.json()
    assert body["model"] == "claude-sonnet-4-5" and body["max_tokens"] == 4000
    assert body["system"]
    assert body["messages"][-1]["content"][-2:] == [
        {"type": "text", "text": "[alice asks you]\n"},
        {"type": "text", "text": "salut"},
    ]


async def test_the_context_counts_the_opening_turn_for_anthropic_models_only(
    tmp_path: Path,
) -> None:
    """Review RZ-4: Anthropic's "(earlier conversation left out)" turn went uncounted; the
    builder counts it when the session's model is Anthropic's (``user_turn_first``)."""
    upstream = FakeUpstream([])
    for model, first in (("claude", True), ("gpt", False)):
        async with (
            upstream.running(),
            parley_with(upstream, sqlite_url(tmp_path, f"{model}.db"), default=model) as parley,
        ):
            sid = await parley.new_session({"alice": "editor"})
            alice = await parley.session(sid)
            assert alice.room.context.settings_now().user_turn_first is first


async def test_a_dropped_stream_fails_the_prompt_and_keeps_the_partial_text(tmp_path: Path) -> None:
    pieces = openai_stream(["Half", " a", " reply", " and", " more"])[:4]
    upstream = FakeUpstream([Reply(pieces=pieces, end="drop"), Reply(pieces=openai_stream(["x"]))])
    async with upstream.running(), parley_with(upstream, sqlite_url(tmp_path)) as parley:
        _, alice = await ask(parley)
        prompt, reply = await settled(alice)
    assert prompt.status == "failed" and reply.status == "failed"
    assert reply.content == "Half a reply"
    assert prompt.reason_code == "provider_error"
    assert prompt.reason is not None
    assert prompt.reason.startswith("model 'gpt' connection failed")
    assert len(upstream.exchanges) == 1  # no silent second answer after tokens streamed


async def test_429_with_retry_after_then_success(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="parley")
    limited = Reply(
        429,
        [b'{"error": {"message": "Rate limit reached for requests", "type": "requests"}}'],
        headers={"content-type": "application/json", "retry-after": "1"},
    )
    upstream = FakeUpstream([limited, Reply(pieces=openai_stream(["after", " waiting"]))])
    async with upstream.running(), parley_with(upstream, sqlite_url(tmp_path)) as parley:
        _, alice = await ask(parley)
        _, reply = await settled(alice)
    assert reply.status == "done" and reply.content == "after waiting"
    assert len(upstream.exchanges) == 2
    (retry,) = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert (retry.__dict__["status"], retry.__dict__["delay_s"]) == (429, 1.0)  # Retry-After: 1


async def test_500_before_the_first_token_then_success(tmp_path: Path) -> None:
    broken = Reply(500, [b"upstream exploded"], headers={"content-type": "text/plain"})
    upstream = FakeUpstream([broken, broken, Reply(pieces=anthropic_stream(["third", " time"]))])
    async with (
        upstream.running(),
        parley_with(upstream, sqlite_url(tmp_path), default="claude") as parley,
    ):
        _, alice = await ask(parley)
        _, reply = await settled(alice)
    assert reply.status == "done" and reply.content == "third time"
    assert len(upstream.exchanges) == 3


async def test_too_many_failures_fail_the_prompt_with_the_upstream_reason(tmp_path: Path) -> None:
    broken = Reply(503, [b'{"error": {"message": "no capacity"}}'])
    upstream = FakeUpstream([broken, broken])
    async with (
        upstream.running(),
        parley_with(upstream, sqlite_url(tmp_path), provider_max_attempts=2) as parley,
    ):
        _, alice = await ask(parley)
        prompt, reply = await settled(alice)
    assert prompt.status == "failed" and reply.content == ""
    assert prompt.reason_code == "provider_error"
    assert prompt.reason == "model 'gpt' answered 503: no capacity"
    assert len(upstream.exchanges) == 2


async def test_cancelling_a_slow_stream_closes_the_upstream_connection(tmp_path: Path) -> None:
    words = [f"w{n} " for n in range(400)]
    upstream = FakeUpstream([Reply(pieces=openai_stream(words), delay_s=0.02)])
    async with upstream.running(), parley_with(upstream, sqlite_url(tmp_path)) as parley:
        _, alice = await ask(parley)
        await alice.until(
            lambda s: any(e.kind == "reply" and len(e.content) > 20 for e in s.room.doc.entries())
        )
        prompt_id = alice.room.doc.entries()[0].id
        sent = time.monotonic()
        cancelled = await alice.send("alice", CancelCommand("c", prompt_id))
        assert cancelled["type"] == "ack"
        exchange = upstream.exchanges[0]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await exchange.hung_up.wait()
        # Set only when the client hangs up while the reply is still being written.
        assert exchange.hung_up_at is not None, "the upstream saw the connection close"
        print(f"\ncancel to upstream disconnect: {(exchange.hung_up_at - sent) * 1000:.1f} ms")
        prompt, reply = await settled(alice)
    assert prompt.status == "cancelled" and reply.content.startswith("w0 w1 ")
    assert len(reply.content) < len("".join(words))


async def test_api_keys_appear_nowhere(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = json.dumps(
        {"error": {"message": f"Incorrect API key provided: {OPENAI_KEY}", "type": "auth"}}
    ).encode()
    upstream = FakeUpstream([Reply(401, [echo], headers={"content-type": "application/json"})])
    async with upstream.running(), parley_with(upstream, sqlite_url(tmp_path)) as parley:
        sid, alice = await ask(parley)
        prompt, _ = await settled(alice)
        transcript = (await sessions_api.get_transcript(parley.state, sid, ADMIN)).body.decode()
        session = (await sessions_api.get_session(parley.state, sid)).model_dump_json()
    assert prompt.reason_code == "provider_error"
    assert prompt.reason is not None
    assert prompt.reason.startswith("model 'gpt' answered 401: Incorrect API")
    assert upstream.exchanges[0].headers["authorization"] == f"Bearer {OPENAI_KEY}"  # it was sent
    for text in (prompt.reason, transcript, session, caplog.text):
        assert OPENAI_KEY not in text and ANTHROPIC_KEY not in text
    assert "[redacted]" in prompt.reason and "[redacted]" in transcript
    assert "model call failed" in caplog.text  # the failure was logged, without the key


async def test_the_session_model_is_chosen_over_rest(tmp_path: Path) -> None:
    upstream = FakeUpstream(
        [Reply(pieces=openai_stream(["from gpt"])), Reply(pieces=anthropic_stream(["from claude"]))]
    )
    async with upstream.running(), parley_with(upstream, sqlite_url(tmp_path)) as parley:
        state = parley.state
        sid = await parley.new_session({"alice": "editor"})
        assert (await sessions_api.get_session(state, sid)).model is None
        preview = json.loads((await context_api.preview_context(state, sid, "alice", ADMIN)).body)
        assert preview["budget"] == 8000 - 500
        with pytest.raises(InvalidInput) as unknown:
            await sessions_api.update_session(state, sid, SessionPatch(model="gpt-9"), ADMIN)
        assert unknown.value.code == "invalid" and unknown.value.http_status == 422
        assert "claude, gpt" in str(unknown.value)
        alice = await parley.session(sid)
        await alice.send("alice", PromptCommand("1", "one"))
        await settled(alice, 1)
        chosen = await sessions_api.update_session(state, sid, SessionPatch(model="claude"), ADMIN)
        assert chosen.model == "claude"
        preview = json.loads((await context_api.preview_context(state, sid, "alice", ADMIN)).body)
        assert preview["budget"] == 200_000 - 4000
        await alice.send("alice", PromptCommand("2", "two"))
        entries = await settled(alice, 2)
        back = await sessions_api.update_session(state, sid, SessionPatch(model=None), ADMIN)
        assert back.model is None
    replies = [(e.author, e.content) for e in entries if e.kind == "reply"]
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


async def test_usage_is_recorded_per_issuer_and_shown_over_rest(database_url: str) -> None:
    upstream = FakeUpstream(
        [
            Reply(pieces=openai_stream(["one"], usage=(31, 3))),
            Reply(pieces=anthropic_stream(["two"], usage=(40, 7))),
        ]
    )
    async with upstream.running(), parley_with(upstream, database_url) as parley:
        state = parley.state
        sid = await parley.new_session({"alice": "editor", "bob": "editor"})
        s = await parley.session(sid)
        await s.send("alice", PromptCommand("1", "one"))
        await settled(s, 1)
        await sessions_api.update_session(state, sid, SessionPatch(model="claude"), ADMIN)
        await s.send("bob", PromptCommand("1", "two"))
        await settled(s, 2)
        usage = await usage_api.get_usage(state, sid, None, None)
        only_bob = await usage_api.get_usage(state, sid, "bob", None)
        long_ago = await usage_api.get_usage(state, sid, None, "2000-01-01")
        with pytest.raises(NotFound) as unknown:
            await usage_api.get_usage(state, "nope", None, None)
        today = datetime.datetime.fromtimestamp(state.clock(), datetime.UTC)
    assert usage.input_tokens == 71 and usage.output_tokens == 10
    assert [u.model_dump() for u in usage.users] == [
        {"user_id": "alice", "input_tokens": 31, "output_tokens": 3, "calls": 1},
        {"user_id": "bob", "input_tokens": 40, "output_tokens": 7, "calls": 1},
    ]
    assert usage.day == today.strftime("%Y-%m-%d")
    assert usage.quotas.model_dump() == {
        "session_tokens_per_day": None,
        "user_tokens_per_day": None,
    }
    assert [u.user_id for u in only_bob.users] == ["bob"] and only_bob.input_tokens == 40
    assert long_ago.users == [] and long_ago.input_tokens == 0
    assert unknown.value.http_status == 404


async def test_a_prompt_over_quota_fails_before_any_model_call(tmp_path: Path) -> None:
    upstream = FakeUpstream([Reply(pieces=openai_stream([w], usage=(31, 3))) for w in "ab"])
    async with upstream.running(), parley_with(upstream, sqlite_url(tmp_path)) as parley:
        state = parley.state
        sid = await parley.new_session({"alice": "editor", "bob": "editor"})
        s = await parley.session(sid)
        await s.send("alice", PromptCommand("1", "first"))
        await settled(s, 1)
        put = await usage_api.put_quotas(state, sid, QuotasPut(user_tokens_per_day=30))
        assert put.model_dump() == {"session_tokens_per_day": None, "user_tokens_per_day": 30}
        await s.send("alice", PromptCommand("2", "second"))
        await settled(s, 2)
        await s.send("bob", PromptCommand("1", "bob's first"))
        await settled(s, 3)
        await usage_api.put_quotas(state, sid, QuotasPut(session_tokens_per_day=60))
        await s.send("bob", PromptCommand("2", "bob's second"))
        entries = await settled(s, 4)
        with pytest.raises(InvalidInput) as bad:
            await usage_api.put_quotas(state, sid, rest_body(QuotasPut, user_tokens_per_day=0))
        stored = (await usage_api.get_quotas(state, sid)).model_dump()
    replies = [e for e in entries if e.kind == "reply"]
    prompts = [e for e in entries if e.kind == "prompt"]
    assert [p.status for p in prompts] == ["done", "failed", "done", "failed"]
    assert prompts[1].reason_code == prompts[3].reason_code == "quota_exceeded"
    assert prompts[1].reason == "alice reached their quota of 30 tokens today"
    assert prompts[3].reason == "the session reached its quota of 60 tokens today"
    assert [r.content for r in replies] == ["a", "", "b", ""]
    assert len(upstream.exchanges) == 2  # the refused prompts never reached the model
    assert bad.value.http_status == 422 and bad.value.code == "invalid"
    assert stored == {"session_tokens_per_day": 60, "user_tokens_per_day": None}
