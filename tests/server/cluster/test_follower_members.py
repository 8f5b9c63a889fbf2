"""A following node puts a change of who may read in force before it sends a socket the
updates committed after it, whether or not the change's notification came first."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley.server.settings import Settings
from parley.server.store.access import CHANNEL_SETTINGS
from tests.conftest import make_settings, postgres_database, serve_in_process

pytestmark = pytest.mark.postgres


async def test_a_removal_is_in_force_on_a_follower_before_what_was_posted_after_it(
    tmp_path: Path,
) -> None:
    """Review (left open): a follower learnt of a removal from its notification, which
    may reach it after the document's later updates (another connection), and a removed
    member's socket there could be sent what was posted after the removal. The tail it
    reads says who may read as of its updates; here the notification never comes."""
    async with postgres_database(migrated=True) as url:

        def node(name: str) -> Settings:
            # No safety-net poll during the test: only the document's notice wakes it.
            return make_settings(
                url, tmp_path / name, cluster=True, node_id=name, cluster_poll_s=3600
            )

        async with serve_in_process(node("a")) as first, serve_in_process(node("b")) as second:
            sid = await first.new_session({"ann": "owner", "bob": "editor"})
            ann = await first.connect(sid, "ann")  # the session runs on the first node
            follower = second.app.state.parley.rooms.cluster
            follower.listener.channels[CHANNEL_SETTINGS] = lambda _: None  # never told
            bob = await second.connect(sid, "bob")
            before = await ann.command({"type": "message", "id": "m1", "text": "before"})
            await bob.wait_until(
                lambda c: any(e["id"] == before["message_id"] for e in c.entries())
            )

            removed = await first.http.delete(f"/api/v1/sessions/{sid}/members/bob")
            assert removed.status_code == 204, removed.text
            await ann.command({"type": "message", "id": "m2", "text": "after bob left"})
            assert await bob.wait_closed(timeout=20) in {4401, 4403}
            assert all(e["content"] != "after bob left" for e in bob.entries())
