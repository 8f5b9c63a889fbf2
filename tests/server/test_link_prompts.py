"""A prompt that waits, sent with a token from another member's invite link, is judged by
that token when its run starts: the maker lowered meanwhile (the token dead, as revoked),
it does not run with the rights the link handed out; one server and cluster mode alike."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.fake_model import Answer, FakeModel, Sent
from tests.server.cluster.nodes import two_in_process


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def _servers(
    tmp_path: Path, model: FakeModel, cluster: bool
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """The server that runs the session, and the one the maker's change goes through (in
    cluster mode another node; otherwise the same)."""
    if not cluster:
        async with serve_in_process(make_settings(sqlite_url(tmp_path), tmp_path), model) as one:
            yield one, one
        return
    async with two_in_process(tmp_path, model) as (_, first, second):
        yield first, second


@pytest.mark.parametrize(
    "cluster", [False, pytest.param(True, marks=pytest.mark.postgres)], ids=["one", "cluster"]
)
async def test_a_waiting_prompt_of_a_link_token_does_not_run_once_its_maker_is_lowered(
    tmp_path: Path, cluster: bool
) -> None:
    """carol's prompt, sent with a token from alice's link, waited behind dave's run;
    alice was lowered to editor, who may not hand out that link: the token died (its
    calls 401), yet the prompt ran later, a model call made on the token's behalf. Judged
    when its run starts by the token as it stands then, it fails ``token_revoked``, no
    model call made."""
    first_done = asyncio.Event()

    def script(sent: Sent) -> Answer:
        return [first_done, "first answer"] if "first" in sent.asked_text() else ["Hello "]

    model = FakeModel(script)
    async with _servers(tmp_path, model, cluster) as (running, other):
        sid = await running.new_session({"alice": "owner", "carol": "editor", "dave": "editor"})
        carol = await running.link_token(sid, "alice", "carol")
        dave = await running.connect(sid, "dave", commands="text")
        await dave.command({"type": "prompt", "id": "p1", "text": "first"})
        await dave.wait_until(lambda c: len(model.requests) == 1, timeout=30)
        url = f"/api/v1/sessions/{sid}"
        sent = await running.http.post(
            f"{url}/prompts", json={"id": "p2", "text": "second"}, headers=_bearer(carol)
        )
        assert sent.status_code == 202, sent.text
        prompt = f"{url}/prompts/{sent.json()['prompt_id']}"
        lowered = await other.http.put(f"{url}/members/alice", json={"role": "editor"})
        assert lowered.status_code == 200, lowered.text
        refused = await running.http.get(f"{url}/me", headers=_bearer(carol))
        assert refused.status_code == 401, refused.text
        first_done.set()

        async def settled() -> dict[str, Any]:
            for _ in range(300):
                answer: httpx.Response = await running.http.get(prompt)
                status = answer.json()
                if status["status"] not in ("queued", "running"):
                    return dict(status)
                await asyncio.sleep(0.1)
            raise AssertionError(f"carol's prompt still {status}")

        status = await settled()
        assert (status["status"], status.get("reason_code")) == ("failed", "token_revoked"), status
        assert model.requests_for("carol") == []
