"""Settings changed over REST on any node are in force where the session runs before the
call returns: roles, members, the model, tools, quotas, documents, the restricted-reply
policy.

Two real ``parley serve`` nodes on one PostgreSQL; the session runs on the first, each
change goes through the second, and the next prompt goes through the first at once (no
waiting for a poll: the REST call's return is the signal).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, ServerProcess
from tests.fake_upstream import Reply, openai_stream
from tests.server.cluster.nodes import attach_vault, cluster, search_call, upstream_cluster
from tests.yclient import YClient

pytestmark = pytest.mark.postgres

MODELS = json.dumps([{"name": "quick", "kind": "offline"}, {"name": "other", "kind": "offline"}])
ASKER = ["read_session", "be_present", "post_message", "prompt"]


def admin(node: ServerProcess) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    return httpx.AsyncClient(base_url=node.base_url, headers=headers, timeout=60)


async def reply_to(client: YClient, prompt_id: str) -> dict[str, Any]:
    """The settled reply (and its prompt's status) answering ``prompt_id``."""

    def settled(c: YClient) -> bool:
        prompt = next((e for e in c.entries() if e["id"] == prompt_id), None)
        return prompt is not None and prompt["status"] not in {"queued", "running"}

    await client.wait_until(settled, timeout=30)
    prompt = next(e for e in client.entries() if e["id"] == prompt_id)
    reply = next((e for e in client.entries() if e["id"] == prompt.get("reply_id")), {})
    return {**reply, "prompt_status": prompt["status"], "prompt_code": prompt.get("reason_code")}


async def test_settings_changed_on_a_follower_are_in_force_on_the_running_node(
    tmp_path: Path,
) -> None:
    async with cluster(
        tmp_path,
        2,
        PARLEY_MODELS=MODELS,
        PARLEY_OFFLINE_TOKEN_DELAY_MS="0",
        PARLEY_SUMMARIES="false",
    ) as nodes:
        runner, follower = nodes.nodes
        assert (
            await nodes.http.put("/api/v1/roles/asker", json={"capabilities": ASKER})
        ).is_success
        sid = await nodes.new_session({"olga": "owner", "bob": "asker"})
        assert (await nodes.wait_holder(sid))[0] == "n0"
        bob = await nodes.connect(runner, sid, "bob")
        numbers = itertools.count()

        async def prompt() -> dict[str, Any]:
            return await bob.command({"type": "prompt", "id": f"p{next(numbers)}", "text": "hi"})

        async with admin(follower) as via:
            assert (await prompt())["type"] == "ack"

            # A role redefined without ``prompt``.
            dropped = [c for c in ASKER if c != "prompt"]
            changed = await via.put("/api/v1/roles/asker", json={"capabilities": dropped})
            assert changed.status_code == 200, changed.text
            refused = await prompt()
            assert (refused["type"], refused.get("code")) == ("error", "forbidden"), refused
            assert (await via.put("/api/v1/roles/asker", json={"capabilities": ASKER})).is_success
            assert (await prompt())["type"] == "ack"

            # A member's role changed (they keep reading, they may no longer prompt).
            member = f"/api/v1/sessions/{sid}/members/bob"
            assert (await via.put(member, json={"role": "viewer"})).status_code == 200
            refused = await prompt()
            assert (refused["type"], refused.get("code")) == ("error", "forbidden"), refused
            assert (await via.put(member, json={"role": "asker"})).status_code == 200

            # The session's model.
            patched = await via.patch(f"/api/v1/sessions/{sid}", json={"model": "other"})
            assert patched.status_code == 200, patched.text
            asked = await prompt()
            assert (await reply_to(bob, asked["prompt_id"]))["author"] == "other"

            # A webhook tool the member may use is offered to the model at once.
            tool = {
                "name": "lookup",
                "description": "Look a thing up",
                "url": "http://127.0.0.1:9/hook",
                "capability": "prompt",
            }
            assert (await via.post("/api/v1/tools", json=tool)).status_code == 201
            asked = await prompt()
            await reply_to(bob, asked["prompt_id"])
            calls = (
                await via.get(f"/api/v1/sessions/{sid}/audit", params={"kind": "model_call"})
            ).json()["records"]
            call = next(c for c in calls if c["data"]["prompt_ids"] == [asked["prompt_id"]])
            assert "lookup" in call["data"]["tools_offered"]

            # A quota the session is already over.
            quotas = {"session_tokens_per_day": 1, "user_tokens_per_day": None}
            assert (await via.put(f"/api/v1/sessions/{sid}/quotas", json=quotas)).is_success
            asked = await prompt()
            over = await reply_to(bob, asked["prompt_id"])
            assert (over["prompt_status"], over["prompt_code"]) == ("failed", "quota_exceeded")
        await bob.close()


async def test_documents_and_restricted_replies_changed_on_a_follower_are_in_force_there(
    tmp_path: Path,
) -> None:
    """Who chose ``shared`` is in force where the session runs too: mia (an owner who may
    read no restricted material) chose it before the vault was attached, so the reply
    drawing on the vault stays private; chosen again with the admin key, the next one is
    shared."""
    answer = [Reply(pieces=search_call("vault")), Reply(pieces=openai_stream(["It is 7731."]))]
    async with upstream_cluster(tmp_path, answer * 2) as nodes:
        runner, follower = nodes.nodes
        members = {"olga": "owner", "bob": "editor", "vic": "viewer", "mia": "owner"}
        sid = await nodes.new_session(members)
        assert (await nodes.wait_holder(sid))[0] == "n0"
        bob = await nodes.connect(runner, sid, "bob")
        shared = {"restricted_replies": "shared"}
        mia = {"Authorization": f"Bearer {await nodes.token(follower, sid, 'mia')}"}
        async with httpx.AsyncClient(base_url=follower.base_url, headers=mia) as as_mia:
            chosen = await as_mia.patch(f"/api/v1/sessions/{sid}", json=shared)
            assert chosen.status_code == 200, chosen.text
        async with admin(follower) as via:
            # A document attached through the follower is found by the running node's run.
            await attach_vault(via, sid)
            asked = await bob.command({"type": "prompt", "id": "p", "text": "the vault code?"})
            kept = await reply_to(bob, asked["prompt_id"])
            assert (await via.patch(f"/api/v1/sessions/{sid}", json=shared)).status_code == 200
            asked = await bob.command({"type": "prompt", "id": "q", "text": "the vault code?"})
            reply = await reply_to(bob, asked["prompt_id"])
            audit = (await via.get(f"/api/v1/sessions/{sid}/audit")).json()["records"]
        # mia may not read the vault: her choice does not share it.
        assert "[restricted:" in kept["content"] and "7731" not in kept["content"]
        assert any(r["kind"] == "reply_kept_private" for r in audit)
        assert reply["status"] == "done"
        # Shared by the admin key's choice: the reply stays in the shared document, audited.
        assert "[restricted:" not in reply["content"] and "7731" in reply["content"]
        assert any(r["kind"] == "reply_shared" for r in audit)
        await bob.close()


async def test_a_denial_on_a_follower_stops_the_run_that_drew_on_it_on_the_running_node(
    tmp_path: Path,
) -> None:
    """Review (no confused deputy): bob's run, on the running node, read a document only
    he may read; while the model writes (its stream held), he is denied it through the
    other node. The run stops there (``forbidden``), the model call under way is closed,
    and no further call is made for him."""
    held = asyncio.Event()  # never set: the stream ends only when Parley hangs up
    writing = openai_stream(["Found it. ", "The code is 7731."])
    replies = [Reply(pieces=search_call("vault")), Reply(pieces=writing, hold=held, hold_at=2)]
    async with upstream_cluster(tmp_path, replies) as nodes:
        runner, follower = nodes.nodes
        assert nodes.upstream is not None
        sid = await nodes.new_session({"bob": "editor"})
        assert (await nodes.wait_holder(sid))[0] == "n0"
        bob = await nodes.connect(runner, sid, "bob")
        async with admin(follower) as via:
            document_id = await attach_vault(via, sid)
            asked = await bob.command({"type": "prompt", "id": "p", "text": "the vault code?"})

            def writing_reply(c: YClient) -> bool:
                return any(
                    e["kind"] == "reply" and "Found it." in e["content"] for e in c.entries()
                )

            await bob.wait_until(writing_reply, timeout=30)
            denied = {"role": "editor", "denials": [f"read:{document_id}"]}
            changed = await via.put(f"/api/v1/sessions/{sid}/members/bob", json=denied)
            assert changed.status_code == 200, changed.text
            reply = await reply_to(bob, asked["prompt_id"])
        assert (reply["prompt_status"], reply["prompt_code"]) == ("failed", "forbidden")
        exchanges = nodes.upstream.exchanges
        assert len(exchanges) == 2 and exchanges[1].hung_up.is_set()
        await bob.close()


async def test_a_role_change_does_not_wait_for_a_node_that_stopped(tmp_path: Path) -> None:
    """The node running the session is paused (SIGSTOP) when a role changes elsewhere: the
    change is confirmed once its lease lapses (not after the forward timeout), and the
    session, wherever it runs next, judges by the new role."""
    async with cluster(tmp_path, 2, PARLEY_OFFLINE_TOKEN_DELAY_MS="0") as nodes:
        n0, n1 = nodes.nodes
        assert (
            await nodes.http.put("/api/v1/roles/asker", json={"capabilities": ASKER})
        ).is_success
        async with admin(n1) as on_n1:  # opened through n1, so n1 runs it
            sid = (await on_n1.post("/api/v1/sessions", json={})).json()["id"]
            put = await on_n1.put(f"/api/v1/sessions/{sid}/members/bob", json={"role": "asker"})
            assert put.status_code == 200, put.text
        assert (await nodes.wait_holder(sid))[0] == "n1"
        assert n1.process is not None
        os.kill(n1.process.pid, signal.SIGSTOP)
        try:
            dropped = [c for c in ASKER if c != "prompt"]
            changed = await nodes.http.put("/api/v1/roles/asker", json={"capabilities": dropped})
        finally:
            os.kill(n1.process.pid, signal.SIGCONT)
        assert changed.status_code == 200, changed.text
        async with admin(n1) as on_n1:  # n1 is awake again (it may resume its lease)
            roles = (await on_n1.get("/api/v1/roles")).json()["roles"]
            assert next(r for r in roles if r["name"] == "asker")["capabilities"] == sorted(dropped)
        bob = await nodes.connect(n0, sid, "bob")
        refused = await bob.command({"type": "prompt", "id": "p", "text": "hi"})
        assert (refused["type"], refused.get("code")) == ("error", "forbidden"), refused
        await bob.close()
