"""A following node puts a change of who may read in force before it sends a socket the
updates committed after it, whether or not the change's notification came first."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.server.settings import Settings
from parley.server.store.access import CHANNEL_SETTINGS, AccessStore
from tests.conftest import (
    RunningServer,
    make_settings,
    postgres_database,
    serve_in_process,
    wait_for_a_lock_wait,
)
from tests.server.cluster.nodes import two_in_process
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


def _after_leaving(
    events: list[tuple[int, str, str]], user: str, kind: str = "member_left"
) -> list[str]:
    """The kinds of ``user``'s events stored after the first of ``kind`` (their
    ``member_left``, their ``member_changed``)."""
    left = next(seq for seq, k, _ in events if k == kind)
    return [k for seq, k, actor in events if seq > left and actor == user]


async def _refusals(url: str, sid: str, user: str) -> list[str]:
    """The reasons of ``user``'s ``refused`` audit records, oldest first."""
    connection = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        rows = await connection.fetch(
            "SELECT data FROM audit_log WHERE session_id = $1 AND kind = 'refused'"
            " AND actor = $2 ORDER BY id",
            sid,
            user,
        )
    finally:
        await connection.close()
    return [str(json.loads(r["data"]).get("reason")) for r in rows]


class HeldFence:
    """Holds the next write of ``room`` (on the running node) before its fence: ``reached``
    once it is there, until ``release``."""

    def __init__(self, room: Any) -> None:
        self.reached, self.release = asyncio.Event(), asyncio.Event()
        fence = room.writer.document.fence
        check, held = fence.check, [True]

        async def held_check(*args: Any) -> None:
            if held and held.pop():
                self.reached.set()
                await self.release.wait()
            await check(*args)

        fence.check = held_check


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
    async with two_in_process(tmp_path) as (url, first, second):
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
        held = HeldFence(first.app.state.parley.rooms.loaded(sid))  # bob's message's
        sent = asyncio.create_task(bob.command({"type": "message", "id": "b1", "text": "x"}))
        await asyncio.wait_for(held.reached.wait(), 10)

        # What a DELETE through the follower stores, not yet in force on the first node.
        follower = second.app.state.parley
        removal = await follower.store.change_member(
            sid, "bob", None, int(time.time() * 1000), lambda b, a: Decision(True, "")
        )
        assert removal.before is not None and removal.after is None
        held.release.set()
        # Audited as every other refusal (open item of RA-3: the fence's wrote nothing).
        reasons = await _refused_at_commit(url, sid, "bob", sent, "forbidden")
        assert reasons == ["you are not a member of this session"]

        await follower.rooms.settings_changed(await follower.rooms.current(sid), "bob")
        assert await bob.wait_closed(timeout=20) == 4403
        taken = await ann.command({"type": "message", "id": "a1", "text": "still here"})
        assert taken["type"] == "ack", taken
        assert ann.close_code is None
        assert _after_leaving(await _events(url, sid), "bob") == []


async def test_a_command_judged_before_a_role_change_elsewhere_is_judged_by_it_at_commit(
    tmp_path: Path,
) -> None:
    """Open item of RA-3: the fence read whether the member was there, not their role: bob,
    made a viewer through a follower, could still post on the running node until the
    change was in force there (stored after his ``member_changed``, shown to everyone).
    Here bob's message is held before its fence while the follower stores the change: it
    is refused with the role's reason at its commit, audited, and stores nothing."""
    async with _two_nodes(tmp_path) as nodes:
        url, first, second, sid = nodes.url, nodes.first, nodes.second, nodes.sid
        held = HeldFence(first.app.state.parley.rooms.loaded(sid))  # bob's message's
        sent = asyncio.create_task(nodes.bob.command({"type": "message", "id": "b1", "text": "x"}))
        await asyncio.wait_for(held.reached.wait(), 10)

        # What a PUT through the follower stores, not yet in force on the first node.
        follower = second.app.state.parley
        change = await follower.store.change_member(
            sid,
            "bob",
            Member("bob", "viewer"),
            int(time.time() * 1000),
            lambda b, a: Decision(True, ""),
        )
        assert change.after is not None and change.after.role == "viewer"
        held.release.set()
        reply = await sent
        assert reply["type"] == "error" and reply["code"] == "forbidden", reply
        assert "viewer may not post message" in reply["message"], reply
        assert await _refusals(url, sid, "bob") == [reply["message"]]

        await follower.rooms.settings_changed(await follower.rooms.current(sid), "bob")
        again = await nodes.bob.command({"type": "message", "id": "b2", "text": "y"})
        assert again["type"] == "error" and again["code"] == "forbidden", again
        taken = await nodes.ann.command({"type": "message", "id": "a1", "text": "still here"})
        assert taken["type"] == "ack", taken
        assert _after_leaving(await _events(url, sid), "bob", "member_changed") == []


async def test_a_command_judged_before_a_revocation_elsewhere_is_refused_at_its_commit(
    tmp_path: Path,
) -> None:
    """Open item of RG-2 in cluster mode: a command was judged by its token at the door
    alone. Bob's message, sent on the running node with a token, is held before its fence
    while the follower stores the token's revocation: it is refused ``unauthenticated`` at
    its commit, audited, and stores nothing; his other socket still posts."""
    async with _two_nodes(tmp_path) as nodes:
        await _revoked_while_held(nodes, nodes.first)


# Set in the task of a member change: its commit is held.
A_CHANGE: contextvars.ContextVar[bool] = contextvars.ContextVar("a_change", default=False)


async def test_a_role_change_committed_while_a_command_waits_for_its_fence_judges_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Open item of RA-3: the follower's change of bob to viewer holds the lease row (it
    is about to commit) while bob's message's fence waits for that row; the change
    commits, then the fence reads bob's row. Read FOR KEY SHARE, the row came as the
    fence's snapshot had it (a change of no key column does not conflict with that lock):
    an editor's, and the message was stored after his ``member_changed``. Read FOR SHARE,
    it waits for the change and reads it: refused with the role's reason."""
    async with _two_nodes(tmp_path) as nodes:
        url, second, sid = nodes.url, nodes.second, nodes.sid
        committing, release = asyncio.Event(), asyncio.Event()
        commit = asyncpg.transaction.Transaction.commit

        async def held_commit(self: Any) -> None:
            if A_CHANGE.get():
                committing.set()
                await release.wait()
            await commit(self)

        monkeypatch.setattr(asyncpg.transaction.Transaction, "commit", held_commit)

        async def change() -> Any:
            A_CHANGE.set(True)
            return await second.app.state.parley.store.change_member(
                sid,
                "bob",
                Member("bob", "viewer"),
                int(time.time() * 1000),
                lambda b, a: Decision(True, ""),
            )

        changing = asyncio.create_task(change())
        await asyncio.wait_for(committing.wait(), 10)  # the lease row locked, bob's updated
        sent = asyncio.create_task(nodes.bob.command({"type": "message", "id": "b1", "text": "x"}))
        await wait_for_a_lock_wait(second.app.state.parley.store.engine)  # bob's fence's
        release.set()
        assert (await changing).after is not None
        reply = await sent
        assert reply["type"] == "error" and reply["code"] == "forbidden", reply
        assert "viewer may not post message" in reply["message"], reply
        assert _after_leaving(await _events(url, sid), "bob", "member_changed") == []


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


async def _socket(node: RunningServer, sid: str, token: str) -> YClient:
    client = await YClient.connect(node.ws_url, sid, token)
    node.clients.append(client)
    await asyncio.wait_for(client.synced.wait(), 10)
    return client


async def _revoked_while_held(nodes: TwoNodes, door: RunningServer) -> None:
    """Bob's message, sent through ``door`` with a fresh token, held on the running (first)
    node before its fence while the follower stores that token's revocation (what a
    ``DELETE …/tokens/{jti}`` there stores, not yet in force): refused ``unauthenticated`` at
    its commit, audited, nothing stored; his other socket still posts."""
    url, first, second, sid = nodes.url, nodes.first, nodes.second, nodes.sid
    minted = await first.http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": "bob"})
    issued = minted.json()
    bob = await _socket(door, sid, issued["token"])
    held = HeldFence(first.app.state.parley.rooms.loaded(sid))  # bob's message's
    sent = asyncio.create_task(bob.command({"type": "message", "id": "b1", "text": "x"}))
    await asyncio.wait_for(held.reached.wait(), 10)
    now_ms = int(time.time() * 1000)
    assert await AccessStore(second.app.state.parley.store).revoke_token(sid, issued["jti"], now_ms)
    held.release.set()
    reasons = await _refused_at_commit(url, sid, "bob", sent)
    assert reasons == ["revoked: this token was revoked"]
    assert all(actor != "bob" for _, _, actor in await _events(url, sid))
    taken = await nodes.bob.command({"type": "message", "id": "b2", "text": "other token"})
    assert taken["type"] == "ack", taken


async def _refused_at_commit(
    url: str,
    sid: str,
    user: str,
    sent: asyncio.Task[dict[str, Any]],
    code: str = "unauthenticated",
) -> list[str]:
    """The reasons of ``user``'s refusals once the command ``sent`` was refused ``code`` at
    its commit: its reply says so, or its socket closed first, once the change was in force
    on its node (on a loaded machine the running node's own notice can come before the
    reply), and the running node's audit says so (it judged the command all the same)."""
    try:
        reply = await sent
    except ConnectionError:  # closed 4401/4403 first: as good, if the running node refused it
        reply = None
    if reply is not None:
        assert reply["type"] == "error" and reply["code"] == code, reply
    async with asyncio.timeout(20):
        while True:
            reasons = await _refusals(url, sid, user)
            if reasons:
                assert reply is None or reasons == [reply["message"]], (reasons, reply)
                return reasons
            await asyncio.sleep(0.1)


async def _carol_from_anns_link(nodes: TwoNodes) -> str:
    """A client token of carol (added as an editor), exchanged from ann's invite link."""
    first, sid = nodes.first, nodes.sid
    added = await first.http.put(f"/api/v1/sessions/{sid}/members/carol", json={"role": "editor"})
    assert added.status_code == 200, added.text
    return await first.link_token(sid, "ann", "carol")


async def test_a_forwarded_command_of_a_token_revoked_before_its_commit_is_refused(
    tmp_path: Path,
) -> None:
    """Open item of RG-2: a command forwarded from another node carried no token (the
    forwarded row held the member alone). Bob's message, sent on the follower with a token
    and held on the running node before its fence while the follower stores the token's
    revocation, was acked and stored; it is refused ``unauthenticated`` there, audited, as
    on the direct path."""
    async with _two_nodes(tmp_path) as nodes:
        await _revoked_while_held(nodes, nodes.second)  # forwarded to the first node


@pytest.mark.parametrize("forwarded", [True, False], ids=["forwarded", "direct"])
@pytest.mark.parametrize("lowered", [False, True], ids=["maker-removed", "maker-lowered"])
async def test_a_command_of_a_link_token_is_judged_by_its_maker_as_stored_at_its_commit(
    tmp_path: Path, forwarded: bool, lowered: bool
) -> None:
    """A token from ann's link lives while ann may still make that link. Carol's message,
    sent with it (on the follower, forwarded, or on the running node) and held on the
    running node before its fence while the follower stores ann's removal, or her change
    to editor (who may not invite), was acked and stored: it is refused
    ``unauthenticated`` at its commit, audited, and stores nothing."""
    async with _two_nodes(tmp_path) as nodes:
        url, first, second, sid = nodes.url, nodes.first, nodes.second, nodes.sid
        carol = await _socket(
            second if forwarded else first, sid, await _carol_from_anns_link(nodes)
        )
        held = HeldFence(first.app.state.parley.rooms.loaded(sid))
        sent = asyncio.create_task(carol.command({"type": "message", "id": "c1", "text": "x"}))
        await asyncio.wait_for(held.reached.wait(), 10)

        follower = second.app.state.parley
        change = await follower.store.change_member(
            sid,
            "ann",
            Member("ann", "editor") if lowered else None,
            int(time.time() * 1000),
            lambda b, a: Decision(True, ""),
        )
        assert change.before is not None
        held.release.set()
        reasons = await _refused_at_commit(url, sid, "carol", sent)
        assert len(reasons) == 1 and "'ann', whose invite link" in reasons[0], reasons
        assert all(actor != "carol" for _, _, actor in await _events(url, sid))


async def test_a_link_token_is_revoked_on_every_node_once_its_member_signs_in_otherwise(
    tmp_path: Path,
) -> None:
    """Review RM-1, in a cluster: ann exchanged her link for a fresh carol herself, and
    kept being carol after the real carol was let in on the other node. The token the
    real carol is issued through the follower revokes ann's: a message sent with it on
    the running node, held before its fence, is refused ``unauthenticated`` at its commit
    (audited, nothing stored), its sockets close 4401 on both nodes, and its REST calls
    are refused on both."""
    async with _two_nodes(tmp_path) as nodes:
        url, first, second, sid = nodes.url, nodes.first, nodes.second, nodes.sid
        taken = await _carol_from_anns_link(nodes)
        bearer = {"Authorization": f"Bearer {taken}"}
        sockets = [await _socket(node, sid, taken) for node in (first, second)]
        held = HeldFence(first.app.state.parley.rooms.loaded(sid))
        messages = f"/api/v1/sessions/{sid}/messages"
        sent = asyncio.create_task(first.http.post(messages, json={"text": "x"}, headers=bearer))
        await asyncio.wait_for(held.reached.wait(), 10)

        issued = await second.http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": "carol"})
        assert issued.status_code == 201, issued.text
        held.release.set()
        refused = await sent
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "unauthenticated"
        assert await _refusals(url, sid, "carol") == ["revoked: this token was revoked"]
        assert all(actor != "carol" for _, _, actor in await _events(url, sid))
        for socket in sockets:
            assert await asyncio.wait_for(socket.wait_closed(), 30) == 4401
        me = f"/api/v1/sessions/{sid}/me"
        for node in (first, second):
            assert (await node.http.get(me, headers=bearer)).status_code == 401
        real = {"Authorization": f"Bearer {issued.json()['token']}"}
        assert (await first.http.get(me, headers=real)).status_code == 200
