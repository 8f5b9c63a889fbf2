"""A node that drains (SIGTERM) takes no session over: not in its takeover round (a replica
of a session nobody runs any more, or a session with work and no holder), not when a
member's command or a REST write reaches it, not as it waits for the answer to a command
it forwarded. A healthy node takes the session instead (FX72: the draining node took it,
then held the lease, running nothing, until it exited; the members' session sat on a node
about to go away). A command or write that reaches the draining node for a session nobody
runs is refused at once ``unavailable``, "the server is shutting down", as the draining
node refuses everything else it will not do (it waited ``forward_timeout_s`` for a runner,
past the node's own exit).

Three nodes in this process on one database: ``a`` runs the session and lets its lease go
(released, as a node that unloads it; or run out, as a frozen node's), ``b`` drains, ``c``
is healthy. Their lease rounds are stopped (the lease is long enough to hold meanwhile):
each round the test needs is run by hand, so nothing takes the session in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from parley.server.cluster.lease_round import LeaseRound
from parley.server.cluster.node import ClusterNode
from parley.server.runtime.room import SessionRoom
from parley.session.closes import CloseCode
from tests.conftest import RunningServer
from tests.server.cluster.nodes import (
    forwarded_stored,
    in_process,
    lapse_lease,
    stop_lease_round,
)

pytestmark = pytest.mark.postgres


@dataclass
class Nodes:
    url: str
    sid: str
    holder: RunningServer  # ``a``: ran the session
    draining: RunningServer  # ``b``
    healthy: RunningServer  # ``c``: a read replica of the session

    def cluster(self, node: RunningServer) -> ClusterNode:
        cluster: ClusterNode = node.app.state.parley.rooms.cluster
        return cluster

    async def drain(self) -> None:
        """What SIGTERM does on ``b`` (``ParleyServer.shutdown``) before uvicorn stops."""
        state = self.draining.app.state.parley
        state.draining = True
        await state.rooms.drain(state.settings.shutdown_grace_s)

    async def let_go(self, how: str) -> None:
        """``a``'s lease of the session ends: ``released`` (``a`` unloads the session) or
        ``expired`` (``a`` froze: it renews nothing, and still thinks it runs it)."""
        if how == "released":
            await self.holder.app.state.parley.rooms.unload(self.sid, CloseCode.GOING_AWAY)
        else:
            await lapse_lease(self.cluster(self.holder), self.url, self.sid)
        assert await self.holders() == set()

    async def holders(self) -> set[str]:
        """The nodes holding a live lease (of this session, the only one)."""
        return await self.cluster(self.healthy).leases_table.holders()


@contextlib.asynccontextmanager
async def three_nodes(tmp_path: Path, *, replica_on_draining: bool = True) -> AsyncIterator[Nodes]:
    async with in_process(tmp_path, ["a", "b", "c"], lease_ttl_s=60.0) as (url, servers):
        holder, draining, healthy = servers
        for server in servers:
            await stop_lease_round(server.app.state.parley.rooms.cluster)
        sid = await holder.new_session({"ann": "editor", "bob": "editor", "cy": "editor"})
        await holder.connect(sid, "ann")  # the session runs on ``a``
        if replica_on_draining:
            await draining.connect(sid, "bob")
        await healthy.connect(sid, "cy")
        nodes = Nodes(url, sid, holder, draining, healthy)
        assert await nodes.holders() == {"a"}
        yield nodes


@pytest.mark.parametrize("how", ["released", "expired"])
async def test_a_draining_nodes_round_leaves_a_replica_to_a_healthy_node(
    tmp_path: Path, how: str
) -> None:
    async with three_nodes(tmp_path) as nodes:
        await nodes.drain()
        await nodes.let_go(how)
        draining = nodes.cluster(nodes.draining)
        await LeaseRound(draining)._take_over()
        assert nodes.sid not in draining.running
        assert await nodes.holders() == set()
        healthy = nodes.cluster(nodes.healthy)
        await LeaseRound(healthy)._take_over()
        assert nodes.sid in healthy.running
        assert await nodes.holders() == {"c"}


async def test_a_draining_nodes_round_leaves_a_session_with_work_to_a_healthy_node(
    tmp_path: Path,
) -> None:
    """The session is not loaded on the draining node (which then had no room to refuse a
    load by): a command forwarded to it and unanswered makes it one to take over."""
    async with three_nodes(tmp_path, replica_on_draining=False) as nodes:
        await nodes.drain()
        await nodes.let_go("released")
        healthy = nodes.cluster(nodes.healthy)
        frame = json.dumps({"type": "prompt", "id": "c1", "text": "who runs this?"})
        command_id = await healthy.relay.table.submit(nodes.sid, "cy", frame, None)
        draining = nodes.cluster(nodes.draining)
        await LeaseRound(draining)._take_over()
        assert draining.registry.loaded(nodes.sid) is None
        assert await nodes.holders() == set()
        # Nor does a REST read load it there: it is refused as the draining node refuses.
        read = await nodes.draining.http.get(f"/api/v1/sessions/{nodes.sid}/transcript")
        assert (read.status_code, read.json()["error"]["code"]) == (503, "unavailable"), read.text
        assert await nodes.holders() == set()
        await LeaseRound(healthy)._take_over()
        assert await nodes.holders() == {"c"}
        result = await healthy.relay.table.result(command_id)  # run as it was taken
        assert result is not None and json.loads(result)["type"] == "ack", result


@pytest.mark.parametrize("sent", ["command", "rest-write"])
async def test_a_call_on_a_draining_node_for_a_session_nobody_runs_is_refused_at_once(
    tmp_path: Path, sent: str
) -> None:
    """Nobody runs the session and the node a member's command (a socket's, or a prompt
    over REST) or a REST write of the document reaches drains: it is answered
    ``unavailable``, "the server is shutting down", nothing stored (it waited for a runner
    up to ``forward_timeout_s``, far past the test's bound here, or the draining node took
    the session), and the draining node takes nothing."""
    async with three_nodes(tmp_path) as nodes:
        await nodes.drain()
        await nodes.let_go("released")
        draining = nodes.cluster(nodes.draining)
        draining.live_elsewhere.discard(nodes.sid)  # as its round finds
        room = draining.registry.loaded(nodes.sid)
        assert room is not None
        if sent == "command":
            frame = json.dumps({"type": "prompt", "id": "b1", "text": "anyone there?"})
            async with asyncio.timeout(30):
                error = json.loads(await draining.command(room, "bob", frame))
            assert error["type"] == "error", error
        else:
            async with asyncio.timeout(30):
                put = await nodes.draining.http.put(
                    f"/api/v1/sessions/{nodes.sid}/facts/acct", json={"value": "42"}
                )
            assert put.status_code == 503, put.text
            error = put.json()["error"]
        assert error["code"] == "unavailable" and "shutting down" in error["message"], error
        assert await nodes.holders() == set()
        transcript = await nodes.healthy.transcript(nodes.sid)  # nothing of it stored
        assert [m for m in transcript if m["kind"] == "prompt"] == [], transcript
        facts = await nodes.healthy.http.get(f"/api/v1/sessions/{nodes.sid}/facts")
        assert facts.json()["facts"] == {}, facts.text


async def test_a_rename_stored_through_a_draining_node_is_put_in_force_by_a_healthy_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename is stored before it is put in force where the session runs: through the
    draining node, for a session nobody runs, that is left to the node that takes the
    session next (the write, forwarded and open, is work for a healthy node's round), and
    the call is answered once it is in force, not refused after the title was stored."""
    async with three_nodes(tmp_path) as nodes:
        await nodes.drain()
        await nodes.let_go("released")
        draining = nodes.cluster(nodes.draining)
        draining.live_elsewhere.discard(nodes.sid)  # as its round finds
        stored = forwarded_stored(monkeypatch, draining)
        renamed = asyncio.create_task(
            nodes.draining.http.patch(f"/api/v1/sessions/{nodes.sid}", json={"title": "renamed"})
        )
        async with asyncio.timeout(30):
            await stored.wait()
        assert await nodes.holders() == set()
        healthy = nodes.cluster(nodes.healthy)
        await LeaseRound(healthy)._take_over()
        assert await nodes.holders() == {"c"}
        answer = await asyncio.wait_for(renamed, 30)
        assert answer.status_code == 200, answer.text
        room = healthy.registry.loaded(nodes.sid)
        assert room is not None and room.doc.meta.get("title") == "renamed"


async def test_a_command_the_draining_node_forwarded_is_run_by_a_healthy_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob's prompt was forwarded from the node about to drain; its runner let the session
    go. As the forwarding node waits for the answer it looks for a runner and would take
    the session itself: draining, it leaves it to the healthy node, which runs the prompt;
    bob is answered with its ack."""
    async with three_nodes(tmp_path, replica_on_draining=True) as nodes:
        draining = nodes.cluster(nodes.draining)
        room = draining.registry.loaded(nodes.sid)
        assert room is not None
        stored, looked = forwarded_stored(monkeypatch, draining), asyncio.Event()
        promote = draining.promote

        async def promoted(room: SessionRoom) -> bool:
            taken = await promote(room)
            looked.set()
            return taken

        monkeypatch.setattr(draining, "promote", promoted)
        await nodes.let_go("released")  # ``b`` does not know yet: it forwards
        frame = json.dumps({"type": "prompt", "id": "b1", "text": "before the drain"})
        sent = asyncio.create_task(draining.command(room, "bob", frame))
        async with asyncio.timeout(30):
            await stored.wait()
        await nodes.drain()
        draining.live_elsewhere.discard(nodes.sid)  # as its round finds
        async with asyncio.timeout(30):
            await looked.wait()  # the wait for bob's answer looked for a runner
        assert nodes.sid not in draining.running
        assert await nodes.holders() == set()
        await LeaseRound(nodes.cluster(nodes.healthy))._take_over()
        reply = json.loads(await asyncio.wait_for(sent, 30))
        assert reply["type"] == "ack", reply
        assert await nodes.holders() == {"c"}
        prompts = [m for m in await nodes.healthy.transcript(nodes.sid) if m["kind"] == "prompt"]
        assert [m["content"] for m in prompts] == ["before the drain"], prompts
