"""Side-thread commands sent to a node that does not run the session go through the same
forwarding door as the session's: carried out where it runs, answered where they came. A
side-thread's socket is served by the running node alone: another closes it 1013."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.server.cluster.nodes import cluster
from tests.server.test_ws import close_code_of

pytestmark = pytest.mark.postgres


async def test_side_thread_commands_on_a_following_node_reach_the_running_one(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path, 2) as nodes:
        sid = await nodes.new_session({"bob": "editor"})
        first = await nodes.connect(nodes.nodes[0], sid, "bob")
        holder, _ = await nodes.wait_holder(sid)
        running = next(n for n in nodes.nodes if n.env["PARLEY_NODE_ID"] == holder)
        other = next(n for n in nodes.nodes if n.env["PARLEY_NODE_ID"] != holder)
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
            # The thread's document is served by the running node alone (``ELSEWHERE``).
            issued = await http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": "bob"})
            token = issued.json()["token"]
            url = f"{other.ws_url}/ws/sessions/{sid}/threads/{thread_id}?token={token}"
            assert await close_code_of(url) == 1013
        for client in {first, bob}:
            await client.close()
