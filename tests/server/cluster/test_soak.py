"""Soak: three nodes restarted at random while members keep prompting; all converge.

Bounded in time (``SOAK_S`` of chaos, then a bounded wait to settle). Members resend a
command with the same id after any failure, as a reconnecting client does, so every prompt
that was ever acknowledged must end up in the story exactly once, answered at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from pathlib import Path

import httpx
import pytest
import websockets

from tests.conftest import ServerProcess
from tests.server.cluster.nodes import Cluster, check_one_story, cluster, settled
from tests.yclient import YClient

pytestmark = [pytest.mark.postgres, pytest.mark.xdist_group("heavy")]

SOAK_S = 30.0
USERS = 6


async def member(nodes: Cluster, sid: str, user: str, stop: asyncio.Event, acked: set[str]) -> int:
    """Prompt one at a time until ``stop``; returns how many times it had to reconnect."""
    client: YClient | None = None
    reconnects = 0
    n = 0
    start = random.randrange(len(nodes.nodes))
    while not stop.is_set():
        if client is None or client.close_code is not None:
            if client is not None:
                await client.close()
                reconnects += 1
            client = None
            for k in range(len(nodes.nodes)):
                node = nodes.nodes[(start + reconnects + k) % len(nodes.nodes)]
                with contextlib.suppress(
                    OSError, TimeoutError, websockets.WebSocketException, httpx.HTTPError
                ):
                    client = await nodes.connect(node, sid, user)
                    break
            if client is None:
                await asyncio.sleep(0.2)
                continue
        command = {"type": "prompt", "id": f"{user}-{n}", "text": f"{user} #{n}"}
        try:
            reply = await client.command(command, timeout=10)
        except (TimeoutError, ConnectionError, websockets.ConnectionClosed):  # its node went
            await client.close()
            client = None
            reconnects += 1
            continue
        if reply["type"] == "ack":
            acked.add(str(reply["prompt_id"]))
            n += 1
            await asyncio.sleep(0.15)  # a person's pace, inside the command budget
        else:
            assert reply["code"] in {"unavailable", "queue_full", "rate_limited"}, reply
            await asyncio.sleep(0.5)  # then resend the same id
    if client is not None:
        await client.close()
    return reconnects


async def chaos(nodes: list[ServerProcess], stop: asyncio.Event, rng: random.Random) -> int:
    kills = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(3, 6))
        if stop.is_set():
            break
        victim = rng.choice(nodes)
        assert victim.process is not None
        victim.process.send_signal(rng.choice([signal.SIGKILL, signal.SIGTERM]))
        await asyncio.to_thread(victim.process.wait, 20)
        kills += 1
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        await victim.start()
    return kills


async def test_nodes_restarted_at_random_converge(tmp_path: Path) -> None:
    rng = random.Random(9)
    async with cluster(
        tmp_path,
        3,
        PARLEY_OFFLINE_TOKEN_DELAY_MS="2",
        PARLEY_LEASE_TTL_S="1.5",
        PARLEY_SHUTDOWN_GRACE_S="0.5",
        PARLEY_SNAPSHOT_EVERY_UPDATES="40",
    ) as nodes:
        users = [f"u{i}" for i in range(USERS)]
        sid = await nodes.new_session(dict.fromkeys(users, "editor"))
        stop = asyncio.Event()
        acked: set[str] = set()
        members = [asyncio.create_task(member(nodes, sid, u, stop, acked)) for u in users]
        chaos_task = asyncio.create_task(chaos(nodes.nodes, stop, rng))
        await asyncio.sleep(SOAK_S)
        stop.set()
        kills = await chaos_task
        reconnects = sum(await asyncio.gather(*members))

        started = time.monotonic()
        views: list[YClient] = [await nodes.connect(node, sid, "u0") for node in nodes.nodes]
        for view in views:
            # Everything acknowledged shows up, and every run ends, on every node.
            await view.wait_until(
                lambda c: (
                    settled(c, {e["id"] for e in c.entries() if e["kind"] == "prompt"})
                    and acked <= {e["id"] for e in c.entries()}
                ),
                timeout=90,
            )
        stories = [v.entries() for v in views]
        check_one_story(stories, {e["id"] for e in stories[0] if e["kind"] == "prompt"})
        prompts = [e for e in stories[0] if e["kind"] == "prompt"]
        cut = [e for e in prompts if e["status"] != "done"]
        assert all(e["reason_code"] == "failover" for e in cut), cut
        assert len(cut) <= kills
        print(
            f"\nsoak {SOAK_S:g} s: {kills} node restarts, {len(prompts)} prompts "
            f"({len(acked)} acked), {len(cut)} cut off, {reconnects} client reconnects, "
            f"settled {time.monotonic() - started:.1f} s after the chaos"
        )
        assert len(acked) >= 20
        for view in views:
            await view.close()
