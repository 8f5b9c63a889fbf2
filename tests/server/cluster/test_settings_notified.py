"""A change committed is answered as stored even when the notification sent after it
(``ClusterNode.settings_changed``, best effort) fails: the other nodes take it up by their
poll."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.cluster.access import CHANNEL_ACCESS
from parley.server.store.access import CHANNEL_SETTINGS
from tests.server.cluster.nodes import failing_statements, two_in_process

pytestmark = pytest.mark.postgres

# What the reviewer's node logged as its notification failed.
BUSY = "cannot switch to state 15; another operation (2) is in progress"


@contextlib.contextmanager
def failing_notify(
    engine: AsyncEngine, channel: str = CHANNEL_SETTINGS, times: int = 1_000_000
) -> Iterator[list[str]]:
    """The first ``times`` notifications on ``channel`` sent through ``engine`` in a
    statement of their own (after a change's commit: ``settings_changed``, the ask of
    ``AccessSync``) fail as the reviewer's did; yields the payloads of those that failed."""
    lost = engine.dialect.loaded_dbapi.InternalClientError  # asyncpg's, as SQLAlchemy's

    def ours(statement: str, parameters: Any) -> str | None:
        if "pg_notify" in statement and channel in tuple(parameters or ()):
            return str(parameters[-1])
        return None

    with failing_statements(engine, ours, lambda: lost(BUSY), times) as failed:
        yield failed


async def test_a_member_change_whose_notification_fails_is_answered_and_followed(
    tmp_path: Path,
) -> None:
    """Review: a ``PUT …/members/{user}`` through the running node answered 500 when the
    notification after its commit failed, though the change was stored. It is answered
    200, and the other node, told nothing on the settings channel, puts it in force by
    its poll (bob's socket there closes 4403)."""
    async with two_in_process(tmp_path) as (_, first, second):
        sid = await first.new_session({"ann": "owner", "bob": "editor"})
        ann = await first.connect(sid, "ann")  # the session runs on the first node
        follower = second.app.state.parley.rooms.cluster
        follower.listener.channels[CHANNEL_SETTINGS] = lambda _: None  # never told
        bob = await second.connect(sid, "bob")

        denied = {"role": "editor", "denials": ["read_session"]}
        with failing_notify(first.app.state.parley.store.engine) as failed:
            put = await first.http.put(f"/api/v1/sessions/{sid}/members/bob", json=denied)
        assert failed == [sid]  # the notification was sent, and failed
        assert put.status_code == 200, put.text
        assert put.json()["denials"] == ["read_session"]
        stored = await first.http.get(f"/api/v1/sessions/{sid}/members")
        bobs = [m for m in stored.json()["members"] if m["user_id"] == "bob"]
        assert [m["denials"] for m in bobs] == [["read_session"]]

        assert await bob.wait_closed(timeout=20) == 4403  # in force on the other node
        # The first node still runs the session (no lease lost with it).
        taken = await ann.command({"type": "message", "id": "a1", "text": "still here"})
        assert taken["type"] == "ack", taken


async def test_a_role_change_whose_ask_fails_is_asked_again_and_answered(
    tmp_path: Path,
) -> None:
    """The same for roles: the node that stored a change asks every node to reload them
    after its commit; an ask that fails is asked again (review shape: answered 500, the
    change stored). The node that runs a session has it in force when the call returns."""
    async with two_in_process(tmp_path) as (_, first, second):
        sid = await first.new_session({"ann": "owner"})
        await first.connect(sid, "ann")  # the first node runs a session: waited for
        role = {"capabilities": ["read_session"]}
        with failing_notify(second.app.state.parley.store.engine, CHANNEL_ACCESS, 1) as failed:
            put = await second.http.put("/api/v1/roles/reader", json=role)
        assert failed == ["b"]
        assert put.status_code == 200, put.text
        assert "reader" in first.app.state.parley.rooms.roles
