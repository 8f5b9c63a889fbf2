"""A node running a session is stopped gently (SIGTERM): a member on another node goes on
prompting. Their prompts wait for the next node to run the session, as after a crash, and
are answered there: the draining node takes no forwarded command (review rx-1: each was
refused "the server is shutting down; send it again after reconnecting" to a member whose
socket, on a healthy node, was never closed, so no SDK resent it)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.server.cluster.nodes import cluster
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
