"""Side-thread commands sent to a node that does not run the session go through the same
forwarding door as the session's: carried out where it runs, answered where they came. A
side-thread's socket on a node that follows the session is served too, as the session's
is: its document read from the stored log, kept up with it (a reply streamed on the
running node included); it is read-only there as everywhere."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from parley.session.core.state import RESTRICTED_DETAILS
from tests.conftest import ADMIN_KEY
from tests.fake_upstream import Reply, openai_stream
from tests.server.cluster.nodes import attach_vault, cluster, search_call, upstream_cluster
from tests.server.test_quota_wait import thread_document
from tests.stock_client import StockYjsClient, ensure_node_modules
from tests.yclient import YClient

pytestmark = [pytest.mark.postgres, pytest.mark.node]


async def test_side_thread_commands_on_a_following_node_reach_the_running_one(
    tmp_path: Path,
) -> None:
    # A model that takes its time: the reply streams in many stored pieces.
    async with cluster(tmp_path, 2, PARLEY_OFFLINE_TOKEN_DELAY_MS="20") as nodes:
        sid = await nodes.new_session({"bob": "editor"})
        first = await nodes.connect(nodes.nodes[0], sid, "bob")
        running, other = await nodes.running_and_other(sid)
        bob = first if running is nodes.nodes[0] else await nodes.connect(running, sid, "bob")
        # Bob's socket on the running node speaks JSON: it is sent his side-threads.
        await bob.command({"type": "unpin", "id": "json", "entry_id": "none"})
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        base = f"/api/v1/sessions/{sid}/threads"
        async with httpx.AsyncClient(base_url=other.base_url, headers=headers) as http:
            opened = await http.post(base, json={"as_user": "bob", "title": "t", "id": "o"})
            assert opened.status_code == 201, opened.text
            thread_id = opened.json()["thread_id"]
            asked = await http.post(
                f"{base}/{thread_id}/prompts", json={"as_user": "bob", "text": "hi", "id": "p"}
            )
            assert asked.status_code == 202, asked.text

            def answered(client: object) -> bool:
                return any(
                    f.get("type") == "thread"
                    and not f["thread"]["running"]
                    and len(f["thread"]["turns"]) == 2
                    for f in bob.unsolicited
                )

            await bob.wait_until(answered, timeout=30)
            read = await http.get(f"{base}/{thread_id}")  # read on the following node
            assert read.status_code == 200, read.text
            assert [t["kind"] for t in read.json()["turns"]] == ["prompt", "reply"]
            again = await http.post(
                f"{base}/{thread_id}/prompts", json={"as_user": "bob", "text": "hi", "id": "p"}
            )
            assert again.json() == asked.json()  # resent by its id: its first answer
            # The following node serves the thread's document from its stored log.
            issued = await http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": "bob"})
            token = issued.json()["token"]
            await asyncio.to_thread(ensure_node_modules)
            url = f"{other.ws_url}/ws/sessions/{sid}/threads"
            stock = await StockYjsClient.start(url, thread_id, token, name="Bob")
            try:
                await stock.wait_event(lambda e: e.get("event") == "sync" and e["synced"], 15)
                dump = await stock.dump()
                assert [(t["kind"], t["status"]) for t in dump["turns"]] == [
                    ("prompt", "done"),
                    ("reply", "done"),
                ]
                # A reply the running node streams reaches the socket here, as stored.
                more = await http.post(
                    f"{base}/{thread_id}/prompts",
                    json={"as_user": "bob", "text": "more", "id": "q"},
                )
                assert more.status_code == 202, more.text
                reply_id = more.json()["reply_id"]
                dump = await _until(stock, lambda d: _status(d, reply_id) == "done")
                stored = (await http.get(f"{base}/{thread_id}")).json()
                assert [(t["id"], t["status"], t["content"]) for t in dump["turns"]] == [
                    (t["id"], t["status"], t["text"]) for t in stored["turns"]
                ]
                assert dump["turns"][-1]["content"]
                # It grew here piece by piece (stored as it streamed, though no socket on
                # the running node watched it), not whole at its end.
                assert dump["reply_lengths_seen"][reply_id] > 3
                written = await stock.command({"cmd": "write"})
                assert written["attempted"] == 4  # refused here as on the running node
                deleted = await http.delete(f"{base}/{thread_id}")  # the admin's: as its owner
                assert deleted.status_code == 204, deleted.text
                closed = await stock.wait_event(
                    lambda e: e.get("event") == "connection-close" and not e["local"], 30
                )
                assert (closed["code"], closed["reason"]) == (4404, "side-thread deleted")
            finally:
                await stock.close()
        for client in {first, bob}:
            await client.close()


def _status(dump: dict[str, Any], turn_id: str) -> str | None:
    return next((t["status"] for t in dump["turns"] if t["id"] == turn_id), None)


async def _until(stock: StockYjsClient, done: Any) -> dict[str, Any]:
    for _ in range(300):
        dump = await stock.dump()
        if done(dump):
            return dump
        await asyncio.sleep(0.1)
    raise AssertionError(f"not reached: {dump}")


async def test_a_following_node_serves_a_side_thread_judged_for_its_owner_now(
    tmp_path: Path,
) -> None:
    """Bob's side-thread drew on the vault; then he is denied it. A socket opened on the
    node that follows the session (which serves the stored log as it is) is sent the
    placeholder, not the vault: the denial rewrote the log where the session runs."""
    replies = [Reply(pieces=search_call("vault")), Reply(pieces=openai_stream(["It is 7731."]))]
    async with upstream_cluster(tmp_path, replies) as nodes:
        follower = nodes.nodes[1]
        sid = await nodes.new_session({"bob": "editor"})
        assert (await nodes.wait_holder(sid))[0] == "n0"
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        base = f"/api/v1/sessions/{sid}"
        async with httpx.AsyncClient(base_url=follower.base_url, headers=headers) as http:
            document_id = await attach_vault(http, sid)
            opened = await http.post(f"{base}/threads", json={"as_user": "bob", "title": "t"})
            assert opened.status_code == 201, opened.text
            thread_id = opened.json()["thread_id"]
            asked = await http.post(
                f"{base}/threads/{thread_id}/prompts",
                json={"as_user": "bob", "text": "the vault code?", "id": "p"},
            )
            assert asked.status_code == 202, asked.text
            for _ in range(300):
                read = (await http.get(f"{base}/threads/{thread_id}")).json()
                if not read["running"] and len(read["turns"]) >= 3:
                    break
                await asyncio.sleep(0.1)
            assert "7731" in str(read["turns"]), read
            denied = {"role": "editor", "denials": [f"read:{document_id}"]}
            changed = await http.put(f"{base}/members/bob", json=denied)
            assert changed.status_code == 200, changed.text

            issued = await http.post(f"{base}/tokens", json={"user_id": "bob"})
            await asyncio.to_thread(ensure_node_modules)
            url = f"{follower.ws_url}/ws/sessions/{sid}/threads"
            stock = await StockYjsClient.start(url, thread_id, issued.json()["token"], name="Bob")
            try:
                await stock.wait_event(lambda e: e.get("event") == "sync" and e["synced"], 15)
                dump = await stock.dump()
                contents = [t["content"] for t in dump["turns"]]
                assert "7731" not in str(contents) and RESTRICTED_DETAILS in contents, contents
            finally:
                await stock.close()


async def test_a_members_socket_on_a_following_node_is_told_their_side_threads(
    tmp_path: Path,
) -> None:
    """Review (same answer everywhere): ``thread`` frames went only to the running node's
    sockets, so an SDK on another node never learned that its side-thread's reply ended.
    The running node names each change in a notification; every node tells its own
    sockets of the owner, from the store."""
    async with cluster(tmp_path, 2, PARLEY_OFFLINE_TOKEN_DELAY_MS="5") as nodes:
        sid = await nodes.new_session({"bob": "editor", "ann": "editor"})
        _, other = await nodes.running_and_other(sid)
        tokens = {}
        for user in ("bob", "ann"):
            issued = await nodes.http.post(
                f"{other.base_url}/api/v1/sessions/{sid}/tokens", json={"user_id": user}
            )
            tokens[user] = issued.json()["token"]
        bob = await YClient.connect(other.ws_url, sid, tokens["bob"], commands="text")
        ann = await YClient.connect(other.ws_url, sid, tokens["ann"], commands="text")
        opened = await bob.command({"type": "thread_open", "id": "o", "title": "t"}, timeout=30)
        thread_id = opened["thread_id"]
        asked = {"type": "thread_prompt", "id": "p", "thread_id": thread_id, "text": "hi"}
        assert (await bob.command(asked, timeout=30))["type"] == "ack"

        def answered(client: YClient) -> bool:
            return any(
                f.get("type") == "thread"
                and f["thread"]["id"] == thread_id
                and not f["thread"]["running"]
                and len(f["thread"]["turns"]) == 2
                for f in client.unsolicited
            )

        await bob.wait_until(answered, timeout=30)
        await ann.command({"type": "unpin", "id": "x", "entry_id": "none"}, timeout=30)
        assert not any(f.get("type") == "thread" for f in ann.unsolicited)
        closed = {"type": "thread_delete", "id": "d", "thread_id": thread_id}
        assert (await bob.command(closed, timeout=30))["type"] == "ack"
        await bob.wait_until(
            lambda c: any(f.get("type") == "thread_deleted" for f in c.unsolicited), timeout=30
        )


async def test_a_side_thread_turn_a_quota_failed_tells_one_retry_at_on_every_node(
    tmp_path: Path,
) -> None:
    """FX78: the figure is stored with the turn, never worked out on read: the thread's REST
    read and its document on the following node tell the running node's."""
    async with cluster(tmp_path, 2) as nodes:
        sid = await nodes.new_session({"bob": "editor"})
        running, other = await nodes.running_and_other(sid)
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        base = f"/api/v1/sessions/{sid}/threads"
        token = ""
        told: list[list[int | None]] = []
        for node in (running, other):
            async with httpx.AsyncClient(base_url=node.base_url, headers=headers) as http:
                if node is running:
                    thread_id = await _quota_failed_thread(http, sid)
                    issued = await http.post(
                        f"/api/v1/sessions/{sid}/tokens", json={"user_id": "bob"}
                    )
                    token = issued.json()["token"]
                read = (await http.get(f"{base}/{thread_id}")).json()
                told.append([t["retry_at"] for t in read["turns"]])
            url = f"{node.ws_url}/ws/sessions/{sid}/threads/{thread_id}?token={token}"
            shown = await thread_document(url, lambda turns: len(turns) == 4)
            told.append([t.get("retry_at") for t in shown])
        retry_at = told[0][-1]
        assert isinstance(retry_at, int) and retry_at % 86_400_000 == 0
        assert told == [[None, None, retry_at, retry_at]] * 4


async def _quota_failed_thread(http: httpx.AsyncClient, sid: str) -> str:
    """A side-thread of bob's: one prompt answered, then one his quota failed."""
    base = f"/api/v1/sessions/{sid}/threads"
    opened = await http.post(base, json={"as_user": "bob", "title": "t"})
    assert opened.status_code == 201, opened.text
    thread_id: str = opened.json()["thread_id"]
    for text in ("answered", "over the quota"):
        asked = await http.post(
            f"{base}/{thread_id}/prompts", json={"as_user": "bob", "text": text}
        )
        assert asked.status_code == 202, asked.text
        for _ in range(600):  # bounded: 30 s
            read = (await http.get(f"{base}/{thread_id}")).json()
            if not read["running"] and read["turns"][-1]["id"] == asked.json()["reply_id"]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"not settled: {read}")
        if text == "answered":  # the next one is past the quota
            put = await http.put(f"/api/v1/sessions/{sid}/quotas", json={"user_tokens_per_day": 1})
            assert put.status_code == 200, put.text
    return thread_id
