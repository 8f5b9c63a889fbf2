"""A member's presence is theirs on every node: another node's socket cannot overwrite or
clear it (one node's rule, ``Presence``'s ownership of client ids, holds across nodes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley.session.yprotocol import AwarenessState, encode_awareness, encode_awareness_update
from tests.server.cluster.nodes import cluster

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("spoof", [{"name": "not X"}, None], ids=["overwrite", "clear"])
async def test_a_member_on_another_node_cannot_speak_for_anothers_client(
    tmp_path: Path, spoof: dict[str, str] | None
) -> None:
    async with cluster(tmp_path, 2) as nodes:
        sid = await nodes.new_session({"x": "editor", "z": "editor", "w": "viewer"})
        x = await nodes.connect(nodes.nodes[0], sid, "x")
        watcher = await nodes.connect(nodes.nodes[0], sid, "w")
        await x.set_awareness(111, 1, {"name": "X"})
        await watcher.wait_until(lambda c: (c.awareness.get(111) or {}).get("name") == "X", 5)
        z = await nodes.connect(nodes.nodes[1], sid, "z")
        await z.wait_until(lambda c: (c.awareness.get(111) or {}).get("name") == "X", 5)
        # z speaks for x's client 111 (a later clock) and for a client of its own, in one
        # update: the watcher sees z's own state, and x's still as x sent it.
        states = [AwarenessState(111, 50, spoof), AwarenessState(333, 1, {"name": "Z"})]
        await z.ws.send(encode_awareness(encode_awareness_update(states)))
        for client in (watcher, z):
            await client.wait_until(lambda c: 333 in c.awareness, 5)
            assert client.awareness[111] == {"name": "X", "parley": {"user_id": "x"}}
        for client in (x, watcher, z):
            await client.close()
