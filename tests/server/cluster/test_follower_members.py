"""A following node puts a change of who may read in force before it sends a socket the
updates committed after it, whether or not the change's notification came first."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from parley.authz.policy import Decision
from parley.server.settings import Settings
from parley.server.store.access import CHANNEL_SETTINGS
from tests.conftest import RunningServer, make_settings, postgres_database, serve_in_process
from tests.yclient import YClient

pytestmark = pytest.mark.postgres

# Set in the task of bob's write (and so in any task it starts): its commit is held.
BOBS_WRITE: contextvars.ContextVar[bool] = contextvars.ContextVar("bobs_write", default=False)


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


async def _events(url: str, sid: str) -> list[tuple[int, str, str]]:
    """The session's stored events: (number, kind, actor), in order."""
    connection = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        rows = await connection.fetch(
            "SELECT seq, kind, actor FROM session_events WHERE session_id = $1 ORDER BY seq",
            sid,
        )
    finally:
        await connection.close()
    return [(int(r["seq"]), str(r["kind"]), str(r["actor"])) for r in rows]


def _after_leaving(events: list[tuple[int, str, str]], user: str) -> list[str]:
    """The kinds of ``user``'s events stored after their ``member_left``."""
    left = next(seq for seq, kind, _ in events if kind == "member_left")
    return [kind for seq, kind, actor in events if seq > left and actor == user]


@dataclass
class TwoNodes:
    """Two in-process nodes on database ``url``; session ``sid`` runs on ``first``, and
    ann (owner) and bob (editor) each have a socket there."""

    url: str
    first: RunningServer
    second: RunningServer
    sid: str
    ann: YClient
    bob: YClient


@contextlib.asynccontextmanager
async def _two_nodes(tmp_path: Path) -> AsyncIterator[TwoNodes]:
    async with postgres_database(migrated=True) as url:

        def node(name: str) -> Settings:
            return make_settings(url, tmp_path / name, cluster=True, node_id=name)

        async with serve_in_process(node("a")) as first, serve_in_process(node("b")) as second:
            sid = await first.new_session({"ann": "owner", "bob": "editor"})
            ann = await first.connect(sid, "ann")  # the session runs on the first node
            bob = await first.connect(sid, "bob")
            yield TwoNodes(url, first, second, sid, ann, bob)


async def test_a_command_judged_before_a_removal_elsewhere_is_refused_at_its_commit(
    tmp_path: Path,
) -> None:
    """Review RA-3: a member removed through a follower could still store commands on the
    running node until the removal was put in force there (judged by the members in
    memory, committed after ``member_left``). Here bob's message is held before its
    transaction's first statement (its fence) while the follower stores his removal: it is
    refused ``forbidden`` at its commit and stores nothing; ann's socket stays open and
    her next message is taken."""
    async with _two_nodes(tmp_path) as nodes:
        url, first, second, sid = nodes.url, nodes.first, nodes.second, nodes.sid
        ann, bob = nodes.ann, nodes.bob
        room = first.app.state.parley.rooms.loaded(sid)
        fence = room.writer.document.fence
        check = fence.check
        reached, release = asyncio.Event(), asyncio.Event()
        held = [True]

        async def held_check(*args: Any) -> None:
            if held and held.pop():  # the next write's fence: bob's message
                reached.set()
                await release.wait()
            await check(*args)

        fence.check = held_check
        sent = asyncio.create_task(bob.command({"type": "message", "id": "b1", "text": "x"}))
        await asyncio.wait_for(reached.wait(), 10)

        # What a DELETE through the follower stores, not yet in force on the first node.
        follower = second.app.state.parley
        removal = await follower.store.change_member(
            sid, "bob", None, int(time.time() * 1000), lambda b, a: Decision(True, "")
        )
        assert removal.before is not None and removal.after is None
        release.set()
        reply = await sent
        assert reply["type"] == "error" and reply["code"] == "forbidden", reply

        await follower.rooms.settings_changed(await follower.rooms.current(sid), "bob")
        assert await bob.wait_closed(timeout=20) == 4403
        taken = await ann.command({"type": "message", "id": "a1", "text": "still here"})
        assert taken["type"] == "ack", taken
        assert ann.close_code is None
        assert _after_leaving(await _events(url, sid), "bob") == []


async def test_a_removed_members_write_cut_off_as_it_commits_leaves_the_room_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review RA-2: bob's socket, closed by his removal (put in force from a follower)
    while his message's COMMIT was under way, cancelled the write; the commit done, the
    write was taken for failed, the store then found it, and the room was given up: every
    socket of the session closed 1013 and ann's next write refused ``unavailable``. Here
    the commit is done and its answer held until bob's socket is closed: his message is
    kept (stored before his ``member_left``), ann's socket stays open, her write taken."""
    async with _two_nodes(tmp_path) as nodes:
        url, first, second, sid = nodes.url, nodes.first, nodes.second, nodes.sid
        ann, bob = nodes.ann, nodes.bob
        committed, release = asyncio.Event(), asyncio.Event()
        armed, held = [True], [True]
        commit = asyncpg.transaction.Transaction.commit
        room = first.app.state.parley.rooms.loaded(sid)
        carry_out = room.writer.carry_out

        async def marked(*args: Any, **kwargs: Any) -> Any:
            if armed and armed.pop():  # the next write: bob's message (its commit too)
                BOBS_WRITE.set(True)
            return await carry_out(*args, **kwargs)

        async def held_commit(self: Any) -> None:
            await commit(self)
            if BOBS_WRITE.get() and held and held.pop():
                committed.set()
                await release.wait()

        room.writer.carry_out = marked
        monkeypatch.setattr(asyncpg.transaction.Transaction, "commit", held_commit)
        sent = asyncio.create_task(bob.command({"type": "message", "id": "b1", "text": "x"}))
        await asyncio.wait_for(committed.wait(), 10)

        removed = asyncio.create_task(second.http.delete(f"/api/v1/sessions/{sid}/members/bob"))
        assert await bob.wait_closed(timeout=20) == 4403
        release.set()
        assert (await removed).status_code == 204
        with contextlib.suppress(ConnectionError):
            await sent
        taken = await ann.command({"type": "message", "id": "a1", "text": "still here"})
        assert taken["type"] == "ack", taken
        assert ann.close_code is None
        events = await _events(url, sid)
        assert _after_leaving(events, "bob") == []
        assert ("message_posted", "bob") in [(kind, actor) for _, kind, actor in events]
