"""A node running a session is stopped gently (SIGTERM): a member on another node goes on
prompting. Their prompts wait for the next node to run the session, as after a crash, and
are answered there: the draining node takes no forwarded command (review rx-1: each was
refused "the server is shutting down; send it again after reconnecting" to a member whose
socket, on a healthy node, was never closed, so no SDK resent it)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from parley.server.cluster import relay
from parley.server.runtime.room import SessionRoom
from parley.session.closes import CloseCode
from tests.server.cluster.nodes import cluster, forwarded_stored, two_in_process
from tests.server.cluster.test_settings import reply_to
from tests.yclient import YClient

pytestmark = pytest.mark.postgres


async def test_a_prompt_through_a_healthy_node_waits_out_the_drain_of_the_running_one(
    tmp_path: Path,
) -> None:
    async with cluster(
        tmp_path,
        2,
        PARLEY_OFFLINE_TOKEN_DELAY_MS="60",  # alice's reply keeps the drain going
        PARLEY_SHUTDOWN_GRACE_S="20",
        PARLEY_LEASE_TTL_S="2",
        PARLEY_SUMMARIES="false",
    ) as nodes:
        sid = await nodes.new_session({"alice": "editor", "carol": "editor"})
        running, other = await nodes.running_and_other(sid)
        alice = await nodes.connect(running, sid, "alice")
        carol = await nodes.connect(other, sid, "carol")
        asked = await alice.command({"type": "prompt", "id": "a1", "text": "tell me a story"})
        assert asked["type"] == "ack", asked

        def streaming(client: YClient) -> bool:
            return any(e.get("status") == "streaming" for e in client.entries())

        await carol.wait_until(streaming, timeout=30)
        assert running.process is not None
        running.process.send_signal(signal.SIGTERM)
        assert await alice.wait_closed(timeout=30) == 1001  # the drain has begun there
        sent = await carol.command({"type": "prompt", "id": "c1", "text": "and then?"}, 60)
        assert sent["type"] == "ack", sent
        answered = await reply_to(carol, sent["prompt_id"])
        assert answered["prompt_status"] == "done", answered


async def _drain_ended(relay: Any, sid: str) -> None:
    """Until the relay's pass over ``sid``'s forwarded commands (``CommandRelay.drain``)
    has ended."""
    async with asyncio.timeout(30):
        while sid in relay._draining:  # noqa: ASYNC110 (no event tells of its end)
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("window", ["lease", "take", "run"])
async def test_a_drain_begun_as_the_relay_runs_a_forwarded_command_leaves_it_to_the_next_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: str
) -> None:
    """FX68: the relay asked whether the room drained before it awaited the lease (and then
    the command's page, and the writer): a drain begun meanwhile (at load 15, once) found
    bob's prompt, from a healthy node, run in the draining room and refused "the server is
    shutting down; send it again after reconnecting" on a socket that stayed open. The
    drain begins here, in one process, while the running node's relay waits on an event
    in each of those windows: bob's prompt is left to the next runner, and answered there
    (acknowledged, stored once)."""
    async with two_in_process(tmp_path, lease_ttl_s=2.0) as (_, first, second):
        sid = await first.new_session({"ann": "editor", "bob": "editor"})
        await first.connect(sid, "ann")  # the session runs on the first node
        await second.connect(sid, "bob")  # a read replica on the second
        running = first.app.state.parley.rooms.cluster
        other = second.app.state.parley.rooms.cluster
        room = first.app.state.parley.rooms.loaded(sid)
        replica = second.app.state.parley.rooms.loaded(sid)
        assert sid in running.running and room is not None and replica is not None
        stored = forwarded_stored(monkeypatch, other)
        waiting, go = asyncio.Event(), asyncio.Event()

        async def wait_for_go() -> None:
            waiting.set()
            await go.wait()

        if window == "lease":  # every pass waits, after the lease is asked for
            lease_holds = running.lease_holds

            async def asked(room: SessionRoom) -> bool:
                holds = await lease_holds(room)
                await wait_for_go()
                return bool(holds)

            monkeypatch.setattr(running, "lease_holds", asked)
        elif window == "take":  # the pass that took bob's command waits
            take = running.relay.table.take

            async def took(*args: Any) -> list[Any]:
                taken = await take(*args)
                if taken:
                    await wait_for_go()
                return list(taken)

            monkeypatch.setattr(running.relay.table, "take", took)
        else:  # bob's command waits before it is run (for the writer, say)
            handle_frame = relay.handle_frame

            async def handled(room: SessionRoom, *args: Any) -> str:
                await wait_for_go()
                return await handle_frame(room, *args)

            monkeypatch.setattr(relay, "handle_frame", handled)
        frame = json.dumps({"type": "prompt", "id": "b1", "text": "while it drains"})
        sent = asyncio.create_task(other.command(replica, "bob", frame))
        async with asyncio.timeout(30):
            await stored.wait()
            await waiting.wait()
        room.drain()  # SIGTERM on the running node (``RoomRegistry.drain``)
        go.set()
        await _drain_ended(running.relay, sid)
        # The running node stops: its rooms unload (``RoomRegistry.close``), leases let go.
        await first.app.state.parley.rooms.unload(sid, CloseCode.GOING_AWAY, "shutting down")
        reply = json.loads(await asyncio.wait_for(sent, 60))
        assert reply["type"] == "ack", reply
        prompts = [m for m in await second.transcript(sid) if m.get("kind") == "prompt"]
        assert [m["content"] for m in prompts] == ["while it drains"], prompts
