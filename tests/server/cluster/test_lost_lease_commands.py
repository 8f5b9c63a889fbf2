"""A command that reaches a node which lost the session's lease (it stalled, another node
took the session over) is handled as on any read replica: forwarded to the node that runs
the session now, and answered with its real answer, stored once (review, rx-1's sibling:
a member's prompt on the node paused with SIGSTOP mid-reply was answered "this node lost
the session to another node; nothing was stored" / "...; try again", on a socket that
stayed open, so no SDK resent it and the prompt was lost).

The stall is simulated in one process, deterministically: the first node's lease round is
stopped (a frozen node renews nothing), its lease is expired in the database and the
second node takes the session over. Then either the first node's clock is past its lease
(it renews, finds the lease lost: ``NotHolder``) or it is not (its write is refused at the
fence: ``Fenced``). Either way ann's prompt, sent by the Python SDK through the first
node, is acknowledged: on that socket, or, when the node closes it 1013 as it gives the
session up, resent by its id on the next one."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from parley_client import (
    AdminClient,
    ParleyError,
    Reconnect,
    Session,
    SessionClosed,
    connect,
)
from pycrdt import Map
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.cluster.node import ClusterNode
from parley.session.closes import CloseCode
from tests.conftest import ADMIN_KEY
from tests.server.cluster.nodes import failing_statements, lapse_lease, two_in_process

pytestmark = pytest.mark.postgres

FAST = Reconnect(initial_s=0.05, max_s=0.2)


@dataclass
class TakenOver:
    sid: str
    paused: ClusterNode  # the node that ran the session, and does not know it lost it
    engine: AsyncEngine  # its database engine
    ann: Session  # ann's SDK session, through the paused node
    admin: AdminClient
    warm_id: str  # the prompt ann sent before the pause
    url: str  # the database's
    token: str  # ann's client token


@contextlib.asynccontextmanager
async def taken_over(tmp_path: Path) -> AsyncIterator[TakenOver]:
    # A lease long enough that no round of either node runs during the test on its own.
    async with (
        two_in_process(tmp_path, lease_ttl_s=60.0) as (url, first, second),
        contextlib.AsyncExitStack() as stack,
    ):
        sid = await first.new_session({"ann": "editor", "bob": "editor"})
        await first.connect(sid, "ann")  # the session runs on the first node
        await second.connect(sid, "bob")  # a read replica on the second
        paused = first.app.state.parley.rooms.cluster
        taking = second.app.state.parley.rooms.cluster
        assert sid in paused.running
        admin = await stack.enter_async_context(AdminClient(first.base_url, ADMIN_KEY))
        token = (await admin.create_token(sid, "ann")).token
        ann = await stack.enter_async_context(
            connect(first.ws_url, sid, token, reconnect=FAST, command_timeout_s=60)
        )
        async with asyncio.timeout(60):
            warm = await ann.prompt("before the pause")
            await ann.answer(warm.prompt_id)

        # The first node freezes: its lease round stops, its lease runs out, and the
        # second node takes the session over.
        await lapse_lease(paused, url, sid)
        assert await taking.promote(second.app.state.parley.rooms.loaded(sid))
        assert sid in taking.running and sid in paused.running  # it does not know yet
        engine = first.app.state.parley.store.engine
        yield TakenOver(sid, paused, engine, ann, admin, warm.prompt_id, url, token)


async def prompted_once(nodes: TakenOver) -> None:
    """ann prompts through the node that lost the session: acknowledged and answered by
    the node that runs it now, and stored once."""
    async with asyncio.timeout(60):
        ack = await nodes.ann.prompt("after the pause")
        reply = await nodes.ann.answer(ack.prompt_id)
    assert nodes.sid not in nodes.paused.running
    assert reply is not None and reply.status == "done", reply
    prompts = [e for e in await nodes.admin.transcript(nodes.sid) if e.kind == "prompt"]
    assert [(p.id, p.content) for p in prompts] == [
        (nodes.warm_id, "before the pause"),
        (ack.prompt_id, "after the pause"),
    ]


@pytest.mark.parametrize("stalled", [True, False], ids=["stalled-past-lease", "fenced-at-commit"])
async def test_a_prompt_on_the_node_that_lost_the_session_is_answered_by_the_new_runner(
    tmp_path: Path, stalled: bool
) -> None:
    async with taken_over(tmp_path) as nodes:
        if stalled:
            nodes.paused.held_until[nodes.sid] = 0.0  # it woke past its lease on its clock
        await prompted_once(nodes)


@pytest.mark.parametrize("stalled", [True, False], ids=["stalled-past-lease", "fenced-at-commit"])
async def test_a_prompt_on_the_node_that_lost_a_deleted_session_is_told_it_is_gone(
    tmp_path: Path, stalled: bool
) -> None:
    """FX44: the session was deleted elsewhere (its lease row with it) and the node that
    lost it had not heard yet: ann's prompt, forwarded, could not be stored for a session
    that is gone, and was answered "the database is unavailable" before her socket closed
    4404. It is answered ``not_found``, as a deleted session is everywhere."""
    async with taken_over(tmp_path) as nodes:
        if stalled:
            nodes.paused.held_until[nodes.sid] = 0.0
        # Deleted as ``Store.delete_session`` deletes it, its notice not read here yet (a
        # frozen node reads none).
        connection = await asyncpg.connect(nodes.url.replace("+asyncpg", ""))
        try:
            async with connection.transaction():
                await connection.execute(
                    "DELETE FROM session_leases WHERE session_id = $1", nodes.sid
                )
                await connection.execute("DELETE FROM sessions WHERE id = $1", nodes.sid)
        finally:
            await connection.close()
        room = nodes.paused.registry.loaded(nodes.sid)
        assert room is not None
        prompt = {"type": "prompt", "id": "after-the-delete", "text": "after the delete"}
        async with asyncio.timeout(60):
            reply = json.loads(await nodes.paused.command(room, "ann", json.dumps(prompt)))
        assert (reply["type"], reply["code"]) == ("error", "not_found"), reply
        assert "database" not in reply["message"]
        # ann's SDK is told so too: by the reply, or by the close (4404) that follows it.
        with pytest.raises(ParleyError) as raised:
            async with asyncio.timeout(60):
                await nodes.ann.prompt("after the delete")
        error = raised.value
        if isinstance(error, SessionClosed):
            assert error.close_code == 4404 and error.cause is not None, error
            error = error.cause
        assert error.code == "not_found", error


def renewal(statement: str, _parameters: Any) -> str | None:
    """A lease renewal's statement (``LeaseTable.renew``) is named so."""
    return "renewal" if "RETURNING session_id, epoch" in statement else None


def connection_reset() -> ConnectionResetError:
    return ConnectionResetError("the database connection was reset")


async def test_a_prompt_on_a_woken_node_that_cannot_renew_yet_waits_until_it_knows(
    tmp_path: Path,
) -> None:
    """Woken past its lease, the node cannot reach the database at first to learn whether
    it still holds it: ann's prompt waits (it was refused "the database is unavailable",
    and no SDK resends an error) and is forwarded once the renewal tells it was lost."""
    async with taken_over(tmp_path) as nodes:
        nodes.paused.held_until[nodes.sid] = 0.0
        with failing_statements(nodes.engine, renewal, connection_reset, 2) as failed:
            await prompted_once(nodes)
        assert len(failed) == 2


async def test_a_rename_through_the_node_that_lost_the_session_is_in_force_and_answered(
    tmp_path: Path,
) -> None:
    """A REST change stored through the node that lost the session is put in force by the
    node that runs it now: its title write on the first node was fenced, and the call was
    answered 503 "this node lost the session to another node; nothing was stored", though
    the new title was stored."""
    async with taken_over(tmp_path) as nodes:
        renamed = await nodes.admin.http.patch(
            f"/api/v1/sessions/{nodes.sid}", json={"title": "after the pause"}
        )
        assert renamed.status_code == 200, renamed.text
        assert nodes.sid not in nodes.paused.running
        meta = nodes.ann.doc.get("meta", type=Map)
        async with asyncio.timeout(30):  # in the document, which every client reads
            await nodes.ann.wait_for(lambda _: meta.get("title") == "after the pause")


async def test_a_room_loaded_again_as_the_last_one_unloads_follows_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename case above failed once under load: as the node that lost the session
    gave it up, ann's socket, closed 1013, came back at once, while the old room's runner
    stopped; the room loaded for her then was cleared by the end of the old one's unload
    (the cluster's state of the session: what it follows, its runner), so it followed
    nothing and she never saw the new title. Here the old room's runner stops only once
    the session is loaded again, or that load waits for the unload: the new room follows
    the session either way."""
    async with two_in_process(tmp_path, lease_ttl_s=60.0) as (_, first, second):
        sid = await first.new_session({"ann": "editor", "bob": "editor"})
        await first.connect(sid, "ann")  # the session runs on the first node
        await second.connect(sid, "bob")  # a read replica on the second
        registry = second.app.state.parley.rooms
        node: ClusterNode = registry.cluster
        old_room, runner = registry._rooms[sid]
        go = asyncio.Event()
        stop, after_unload, open_room = runner.stop, registry._after_unload, node.open

        async def stopped() -> None:
            await go.wait()
            await stop()

        async def waited(session_id: str) -> None:
            go.set()  # the load waits for the unload (as it must)
            await after_unload(session_id)

        async def opened(*args: Any) -> None:
            await open_room(*args)
            go.set()  # loaded again while the old room's runner stops

        monkeypatch.setattr(runner, "stop", stopped)
        monkeypatch.setattr(registry, "_after_unload", waited)
        monkeypatch.setattr(node, "open", opened)
        unloading = asyncio.create_task(registry.unload(sid, CloseCode.TRY_AGAIN, "moved"))
        async with asyncio.timeout(30):
            while registry.loaded(sid) is not None:  # noqa: ASYNC110 (taken out at once)
                await asyncio.sleep(0.01)
            room = await registry.get(sid)
            await unloading
        assert room is not old_room and registry.loaded(sid) is room
        assert sid in node.applied and node.runners[sid].room is room


# REST writes through the node that lost the session, each with what shows it done. Each is
# sent with the admin key, or with ann's client token (``"ann"``).
REST_WRITES: dict[str, tuple[str, str, str, Any, Callable[[Any], bool]]] = {
    "member-put": (
        "admin",
        "PUT",
        "/members/cy",
        {"role": "editor"},
        lambda session: any(m["user_id"] == "cy" for m in session["members"]),
    ),
    "member-delete": (
        "admin",
        "DELETE",
        "/members/bob",
        None,
        lambda session: all(m["user_id"] != "bob" for m in session["members"]),
    ),
    "fact-by-member": (
        "ann",
        "PUT",
        "/facts/acct",
        {"value": "42"},
        lambda session: session["facts"].get("acct") == "42",
    ),
    "fact-by-admin": (
        "admin",
        "PUT",
        "/facts/acct",
        {"value": "42"},
        lambda session: session["facts"].get("acct") == "42",
    ),
    "settings": (
        "admin",
        "PATCH",
        "",
        {"restricted_replies": "private"},
        lambda session: session["restricted_replies"] == "private",
    ),
    "prompt-by-member": (
        "ann",
        "POST",
        "/prompts",
        {"text": "over REST", "id": "rest-1"},
        lambda session: True,
    ),
}


async def stored_session(nodes: TakenOver) -> dict[str, Any]:
    """The session's members, facts and settings, read through the node that runs it now."""
    http = nodes.admin.http
    base = f"/api/v1/sessions/{nodes.sid}"
    session = (await http.get(base)).json()
    members = (await http.get(f"{base}/members")).json()
    facts = (await http.get(f"{base}/facts")).json()
    return {**session, "members": members["members"], "facts": facts["facts"]}


@pytest.mark.parametrize(
    ("write", "stalled"),
    [*((write, True) for write in REST_WRITES), ("member-put", False)],
    ids=[*REST_WRITES, "member-put-fenced-at-commit"],
)
async def test_a_rest_write_through_the_node_that_lost_the_session_is_forwarded(
    tmp_path: Path, write: str, stalled: bool
) -> None:
    """RC-5: woken past its lease, the node that lost the session answered a REST write
    503 "this node lost the session to another node; try again" (found as the call caught
    the room up, ``ClusterNode.follow``) and stored nothing: it is forwarded as a read
    replica's, answered with its real answer, and in force."""
    caller, method, path, body, done = REST_WRITES[write]
    async with taken_over(tmp_path) as nodes:
        if stalled:
            nodes.paused.held_until[nodes.sid] = 0.0  # it woke past its lease on its clock
        token = ADMIN_KEY if caller == "admin" else nodes.token
        answer = await nodes.admin.http.request(
            method,
            f"/api/v1/sessions/{nodes.sid}{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code < 300, answer.text
        assert done(await stored_session(nodes))
