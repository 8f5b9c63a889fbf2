"""Every REST read of a session answers the same on every node, whichever runs it.

Two real ``parley serve`` nodes on one PostgreSQL; the session runs on the first. Its model
is a real HTTP upstream (``tests.fake_upstream``) that calls ``search_documents``, so the
session has a tool step and a restricted reply (text kept server-side), a run in flight and
a prompt waiting when the reads are compared.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import ADMIN_KEY, ServerProcess
from tests.fake_upstream import Reply, openai_stream
from tests.server.cluster.nodes import (
    Cluster,
    module_cluster,
    on_module_cluster,
    search_call,
    upstream_cluster,
)

pytestmark = pytest.mark.postgres

# Shared by the tests without a model, each on its own session (``read_while_a_write_waits``
# ends one database connection of a node, as a lost connection would: no node is stopped).
nodes = module_cluster()
shared = on_module_cluster(__name__)

SECRET = "the vault code is 7731"
STALLED_S = 120.0  # the last run streams nothing while the reads are compared
# How long a read of the running node may take to answer while a write waits for the
# database, before the test makes that write fail (an answer in it must not show it).
READ_WINDOW_S = 3.0


async def read(node: ServerProcess, path: str, token: str = ADMIN_KEY) -> tuple[int, Any]:
    async with httpx.AsyncClient(base_url=node.base_url, timeout=30) as http:
        response = await http.get(path, headers={"Authorization": f"Bearer {token}"})
    return response.status_code, response.json() if response.content else None


async def test_every_rest_read_of_a_session_answers_the_same_on_every_node(
    tmp_path: Path,
) -> None:
    replies = [
        Reply(pieces=search_call("vault code")),
        Reply(pieces=openai_stream(["It ", "is ", "7731."])),
        Reply(pieces=openai_stream(["late"]), delay_s=STALLED_S),
    ]
    async with upstream_cluster(tmp_path, replies) as nodes:
        runner, follower = nodes.nodes
        watcher = {"capabilities": ["read_session"]}
        assert (await nodes.http.put("/api/v1/roles/watcher", json=watcher)).is_success
        sid = await nodes.new_session({"olga": "owner", "bob": "editor", "vic": "watcher"})
        document = await nodes.http.post(
            f"/api/v1/sessions/{sid}/documents",
            json={"title": "Vault", "text": SECRET, "readers": {"users": ["bob", "olga"]}},
        )
        assert document.status_code == 201, document.text
        document_id = document.json()["id"]
        quotas = {"session_tokens_per_day": 100000, "user_tokens_per_day": 50000}
        assert (await nodes.http.put(f"/api/v1/sessions/{sid}/quotas", json=quotas)).is_success
        assert (await nodes.wait_holder(sid))[0] == "n0"

        bob = await nodes.connect(runner, sid, "bob")
        olga = await nodes.connect(runner, sid, "olga")
        note = await bob.command({"type": "message", "id": "m1", "text": "a note"})
        assert (await bob.command({"type": "pin", "id": "pin", "entry_id": note["message_id"]}))[
            "type"
        ] == "ack"
        fact = {"type": "set_fact", "id": "f", "key": "region", "value": "eu"}
        assert (await bob.command(fact))["type"] == "ack"
        await bob.command({"type": "prompt", "id": "p1", "text": "the vault code?"})
        await bob.wait_until(
            lambda c: any(e["kind"] == "reply" and e["status"] == "done" for e in c.entries()),
            timeout=30,
        )
        reply = next(e for e in bob.entries() if e["kind"] == "reply")
        assert "[restricted:" in reply["content"]
        # A run in flight (its upstream stalls) and a prompt waiting behind it.
        await bob.command({"type": "prompt", "id": "p2", "text": "and now?"})
        waiting = await olga.command({"type": "prompt", "id": "p3", "text": "me next"})
        await olga.wait_until(
            lambda c: (
                [e["status"] for e in c.entries() if e["kind"] == "prompt"]
                == ["done", "running", "queued"]
            ),
            timeout=30,
        )

        # Redefined through the running node just before the reads (see /members).
        watcher = {"capabilities": ["read_session", "be_present"]}
        assert (await nodes.http.put("/api/v1/roles/watcher", json=watcher)).is_success
        tokens = {
            user: (
                await nodes.http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": user})
            ).json()["token"]
            for user in ("olga", "bob", "vic")
        }
        base = f"/api/v1/sessions/{sid}"
        routes = [
            base,
            base + "/transcript",
            base + "/context?user_id=olga",
            base + "/context?user_id=bob",
            base + "/context?user_id=vic",
            base + "/facts",
            base + "/pins",
            base + "/members",
            base + "/documents",
            base + f"/documents/{document_id}",
            base + f"/entries/{reply['id']}/private",
            base + "/usage",
            base + "/quotas",
            base + "/audit",
            "/api/v1/roles",
            "/api/v1/tools",
        ]
        callers = {"admin": ADMIN_KEY, **tokens}
        differ = []
        for route in routes:
            for who, token in callers.items():
                on_runner = await read(runner, route, token)
                on_follower = await read(follower, route, token)
                if on_runner != on_follower:
                    differ.append((route, who, on_runner[0], on_follower[0]))
        transcript = (await read(follower, base + "/transcript"))[1]["messages"]
        context = (await read(follower, base + "/context?user_id=olga"))[1]
        print(
            f"\non the follower: transcript {len(transcript)} entries, "
            f"context {len(context.get('messages') or [])} messages; "
            f"{len(differ)} of {len(routes) * len(callers)} reads differ: {differ}"
        )
        assert differ == []
        # Not vacuous: the follower answered the whole story, restricted text included.
        assert [e["id"] for e in transcript] == [e["id"] for e in olga.entries()]
        assert context["prompt_ids"] == [waiting["prompt_id"]]
        assert len(context["messages"]) >= 4
        private = await read(follower, base + f"/entries/{reply['id']}/private", tokens["bob"])
        assert private[0] == 200 and "7731" in private[1]["text"]
        for client in (bob, olga):
            await client.close()


async def test_restricted_text_is_pushed_to_readers_on_every_node(tmp_path: Path) -> None:
    """A member whose socket is on a node that does not run the session gets a restricted
    reply's full text pushed as one on the running node does; one who may not read it,
    nothing."""
    replies = [
        Reply(pieces=search_call("vault code")),
        Reply(pieces=openai_stream(["It ", "is ", "7731."])),
    ]
    async with upstream_cluster(tmp_path, replies) as nodes:
        runner, follower = nodes.nodes
        sid = await nodes.new_session({"olga": "owner", "bob": "editor", "alice": "viewer"})
        document = await nodes.http.post(
            f"/api/v1/sessions/{sid}/documents",
            json={"title": "Vault", "text": SECRET, "readers": {"users": ["bob", "olga"]}},
        )
        assert document.status_code == 201, document.text
        assert (await nodes.wait_holder(sid))[0] == "n0"
        bob = await nodes.connect(runner, sid, "bob")
        olga = await nodes.connect(follower, sid, "olga")
        alice = await nodes.connect(follower, sid, "alice")
        for client in (bob, olga, alice):  # speak JSON, so restricted text may be pushed
            await client.command({"type": "unpin", "id": "x", "entry_id": "none"})
        await bob.command({"type": "prompt", "id": "p", "text": "the vault code?"})

        def restricted(client: Any) -> dict[str, Any]:
            return {m["entry_id"]: m for m in client.unsolicited if m["type"] == "restricted"}

        await bob.wait_until(lambda c: len(restricted(c)) == 2, timeout=30)
        await olga.wait_until(lambda c: len(restricted(c)) == 2, timeout=30)
        assert restricted(olga) == restricted(bob)
        reply = next(e for e in bob.entries() if e["kind"] == "reply")
        assert "7731" in restricted(olga)[reply["id"]]["text"]
        # Pushed to alice's node's sockets in the same pass as olga's: a reply read after
        # them on her socket comes after anything pushed to her.
        await alice.command({"type": "unpin", "id": "y", "entry_id": "none"})
        assert restricted(alice) == {}
        for client in (bob, olga, alice):
            await client.close()


async def blocked_writer(database: asyncpg.Connection, timeout_s: float = 20) -> int:
    """The server connection waiting for ``doc_updates`` (locked by the test), polled."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = await database.fetchval(
            "SELECT pid FROM pg_locks WHERE relation = 'doc_updates'::regclass AND NOT granted"
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.05)
    raise TimeoutError("no write waited for the update log")


async def read_while_a_write_waits(
    nodes: Cluster, node: ServerProcess, post: str, body: dict[str, Any], paths: Sequence[str]
) -> list[tuple[int, Any]]:
    """POST ``body`` to ``post`` on ``node`` while the test holds the update log locked,
    read ``paths`` of ``node`` while the write waits for it (answered then, or after
    ``READ_WINDOW_S``), then make the write fail (503: nothing was stored). Returns the
    answers of the reads, which must not show the write."""
    database = await asyncpg.connect(nodes.url.replace("+asyncpg", ""))
    try:
        lock = database.transaction()
        await lock.start()
        await database.execute("LOCK TABLE doc_updates IN SHARE MODE")
        async with httpx.AsyncClient(
            base_url=node.base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ) as http:
            posting = asyncio.ensure_future(http.post(post, json=body, timeout=60))
            writer = await blocked_writer(database)
            # The change is in the node's document now, and not stored.
            reads = asyncio.gather(*(read(node, path) for path in paths))
            await asyncio.wait([reads], timeout=READ_WINDOW_S)
            assert await database.fetchval("SELECT pg_terminate_backend($1)", writer)
            await lock.rollback()
            posted = await posting
            assert posted.status_code == 503, posted.text
            return list(await reads)
    finally:
        await database.close()


@shared
async def test_no_node_answers_a_change_before_it_is_stored(nodes: Cluster) -> None:
    """Review RA-4: the running node answered REST reads from its document as it was being
    written, before the commit, so a read of a follower after its answer could be older (a
    reply 150 characters long after 157; a prompt ``running`` after ``done``), and a change
    whose commit failed could be shown. A read answers committed state on every node: here
    a prompt whose write waits for the update log (locked by the test) and then fails is
    never in an answer, the running node's or a follower's."""
    sid = await nodes.new_session({"bob": "editor"})
    running, follower = await nodes.running_and_other(sid)
    base = f"/api/v1/sessions/{sid}"
    prompt = {"text": "never stored", "id": "p-unstored", "as_user": "bob"}
    paths = [f"{base}/transcript", f"{base}/prompts/p-unstored"]
    transcript, status = await read_while_a_write_waits(
        nodes, running, f"{base}/prompts", prompt, paths
    )
    assert transcript == (200, {"messages": []})
    assert status[0] == 404, status
    for node in (running, follower):
        assert await read(node, f"{base}/transcript") == (200, {"messages": []})
        assert (await read(node, f"{base}/prompts/p-unstored"))[0] == 404
    # What the running node stored and answered, a follower asked next answers too,
    # notified of it or not (it reads the committed tail first).
    async with httpx.AsyncClient(
        base_url=running.base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as http:
        stored = await http.post(f"{base}/messages", json={"text": "kept", "as_user": "bob"})
        assert stored.status_code == 202, stored.text
        seen = await read(running, f"{base}/transcript")
    assert [m["content"] for m in seen[1]["messages"]] == ["kept"]
    assert await read(follower, f"{base}/transcript") == seen


@shared
async def test_no_node_previews_a_change_before_it_is_stored(nodes: Cluster) -> None:
    """Left open by RA-4: the context preview still read the running node's document as a
    write had changed it before its commit, so it showed a message not stored yet (and
    never stored: its write then failed), and a follower asked next answered older. It
    reads what is committed, as the other reads do, and answers as a follower does."""
    sid = await nodes.new_session({"bob": "editor"})
    running, follower = await nodes.running_and_other(sid)
    base = f"/api/v1/sessions/{sid}"
    preview = f"{base}/context?user_id=bob"
    message = {"text": "never stored", "as_user": "bob"}
    (shown,) = await read_while_a_write_waits(
        nodes, running, f"{base}/messages", message, [preview]
    )
    assert shown[0] == 200 and shown[1]["messages"] == [], shown
    assert await read(follower, preview) == shown
    async with httpx.AsyncClient(
        base_url=running.base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as http:
        stored = await http.post(f"{base}/messages", json={"text": "kept", "as_user": "bob"})
        assert stored.status_code == 202, stored.text
        previewed = await read(running, preview)
    assert [m["content"] for m in previewed[1]["messages"]] == ["[bob wrote]\nkept"]
    assert await read(follower, preview) == previewed
