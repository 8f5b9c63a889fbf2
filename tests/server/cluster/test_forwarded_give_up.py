"""A forwarded command its forwarding node gave up on, or that its running node never
answered, never lands later (review RM): one answered ``unavailable`` ("nothing was
stored") is withdrawn with that answer, and is not stored when the running node wakes
(RM-1); one the running node took before the give-up is answered with its real answer
(not 503); and a node that takes a session over runs the commands its previous runner left
unanswered before it serves any write of its own, so an older write never replaces a newer
acknowledged one (RM-3), and never runs again one its previous runner stored and died
before it answered (FX66); a takeover that loses the session as it runs them answers none.

Each stall is held with events in one process, deterministically: the running node's
drain of forwarded commands (a frozen node runs none), or its answer to one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from parley.server.cluster.forwarding import CommandTable, OpenCommand, Withdrawal
from parley.server.cluster.lease import NotHolder
from parley.server.cluster.node import ClusterNode
from parley.server.store.db import create_engine
from parley.server.store.sessions import Store
from tests.conftest import ADMIN_KEY, RunningServer, postgres_database
from tests.server.cluster.nodes import lapse_lease, two_in_process

pytestmark = pytest.mark.postgres


def cluster_of(server: RunningServer) -> ClusterNode:
    node: ClusterNode = server.app.state.parley.rooms.cluster
    return node


def hold_drains(node: ClusterNode) -> tuple[asyncio.Event, Callable[[str], Awaitable[None]]]:
    """``node`` runs no forwarded command until the event is set; its real drain."""
    drain = node.relay.drain
    release = asyncio.Event()

    async def held(session_id: str) -> None:
        await release.wait()
        await drain(session_id)

    node.relay.drain = held  # type: ignore[method-assign]
    return release, drain


def noting_submits(node: ClusterNode) -> asyncio.Event:
    """An event set once ``node`` has forwarded a command (submitted its row)."""
    submitted, submit = asyncio.Event(), node.relay.table.submit

    async def noted_submit(*args: Any) -> int:
        try:
            return await submit(*args)
        finally:
            submitted.set()

    node.relay.table.submit = noted_submit  # type: ignore[method-assign]
    return submitted


async def put_fact(server: RunningServer, sid: str, value: str) -> tuple[int, Any]:
    response = await server.http.put(f"/api/v1/sessions/{sid}/facts/deploy", json={"value": value})
    return response.status_code, response.json()


async def facts(server: RunningServer, sid: str) -> Any:
    response = await server.http.get(f"/api/v1/sessions/{sid}/facts")
    assert response.status_code == 200, response.text
    return response.json()["facts"]


@contextlib.asynccontextmanager
async def run_by_first(
    tmp_path: Path, forward_timeout_s: float
) -> AsyncIterator[tuple[str, RunningServer, RunningServer]]:
    """A session run by the first node and read by the second (no lease round of either
    runs on its own meanwhile); the database's URL, the session and the two nodes."""
    async with two_in_process(tmp_path, lease_ttl_s=60.0, forward_timeout_s=forward_timeout_s) as (
        url,
        first,
        second,
    ):
        sid = await first.new_session({"ann": "editor"})
        assert await facts(first, sid) == {}  # loaded, and run, there
        assert sid in cluster_of(first).running
        assert await facts(second, sid) == {}  # a read replica
        yield url, sid, first, second


async def test_a_command_answered_unavailable_is_not_stored_when_its_runner_wakes(
    tmp_path: Path,
) -> None:
    async with run_by_first(tmp_path, forward_timeout_s=1.0) as (_, sid, first, second):
        release, drain = hold_drains(cluster_of(first))
        status, body = await put_fact(second, sid, "sent while the runner stalled")
        assert status == 503 and body["error"]["code"] == "unavailable", body
        release.set()
        await drain(sid)  # the running node wakes and runs what is left for it
        assert await facts(first, sid) == {}
        assert await facts(second, sid) == {}
        assert "nothing was stored" in body["error"]["message"]


async def test_a_command_taken_before_the_give_up_gets_its_real_answer(
    tmp_path: Path,
) -> None:
    async with run_by_first(tmp_path, forward_timeout_s=1.0) as (_, sid, first, second):
        runner, forwarder = cluster_of(first), cluster_of(second)
        # The running node ran the command and stalls before it answers, until the
        # forwarding node gave up on it (or answered without doing so).
        given_up = asyncio.Event()
        answer, withdraw = runner.relay.table.answer, forwarder.relay.table.withdraw

        async def held_answer(answers: list[tuple[int, str]]) -> None:
            await given_up.wait()
            await answer(answers)

        async def noted_withdraw(command_id: int) -> Withdrawal | str:
            try:
                return await withdraw(command_id)
            finally:
                given_up.set()

        runner.relay.table.answer = held_answer  # type: ignore[method-assign]
        forwarder.relay.table.withdraw = noted_withdraw  # type: ignore[method-assign]
        try:
            status, body = await put_fact(second, sid, "taken")
        finally:
            given_up.set()
        assert (status, body) == (200, {"facts": {"deploy": "taken"}})
        assert await facts(second, sid) == {"deploy": "taken"}


async def test_a_new_runner_settles_what_its_predecessor_left_before_serving_writes(
    tmp_path: Path,
) -> None:
    async with run_by_first(tmp_path, forward_timeout_s=30.0) as (url, sid, first, second):
        frozen, taking = cluster_of(first), cluster_of(second)
        hold_drains(frozen)  # frozen: it runs no forwarded command any more
        submitted = noting_submits(taking)
        old = asyncio.create_task(put_fact(second, sid, "old"))
        await asyncio.wait_for(submitted.wait(), 20)  # it waits for the frozen node
        await lapse_lease(frozen, url, sid)
        # The second node takes the session over; its own drain is held too, so only the
        # takeover itself can run the command left unanswered before the next write.
        release, drain = hold_drains(taking)
        assert await taking.promote(second.app.state.parley.rooms.loaded(sid))
        assert await put_fact(second, sid, "new") == (200, {"facts": {"deploy": "new"}})
        release.set()
        await drain(sid)
        async with asyncio.timeout(20):
            assert await old == (200, {"facts": {"deploy": "old"}})
        assert await facts(second, sid) == {"deploy": "new"}


async def test_expired_commands_are_never_run_and_the_table_is_bounded() -> None:
    """Open commands older than the forward timeout are dropped as they are taken, taken
    ones twice that old are answered "may have been stored", and every command is pruned
    at last, answered or not."""
    async with postgres_database(migrated=True) as url:
        store = Store(create_engine(url))
        sid = "s1"
        await store.create_session(sid, "t", "queue", 0)
        table = CommandTable(store.engine, "n1")
        stale_open = await table.submit(sid, "!admin", '{"id": "o"}')
        stale_taken = await table.submit(sid, "!admin", '{"id": "t"}')
        fresh = await table.submit(sid, "!admin", '{"id": "f"}')
        connection = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:

            async def age(command_id: int, seconds: int, taken: bool = False) -> None:
                await connection.execute(
                    "UPDATE session_commands SET created_at = created_at - $2,"
                    " result = CASE WHEN $3 THEN '' ELSE result END WHERE id = $1",
                    command_id,
                    seconds * 1000,
                    taken,
                )

            await age(stale_open, 31)
            await age(stale_taken, 61, taken=True)
            assert [c.id for c in await table.take(sid, 10, 30.0)] == [fresh]
            assert await table.withdraw(stale_open) is Withdrawal.GONE
            expired = await table.result(stale_taken)
            assert expired is not None and "may have been stored" in expired
            assert await table.withdraw(fresh) is Withdrawal.TAKEN
            late = await table.submit(sid, "!admin", '{"id": "l"}')
            assert await table.withdraw(late) is Withdrawal.WITHDRAWN
            # Taken, never answered (its runner stopped): the next take runs it again.
            assert [c.id for c in await table.take(sid, 10, 30.0)] == [fresh]
            await age(fresh, 601)
            await table.prune(600)
            left = await connection.fetch("SELECT id FROM session_commands ORDER BY id")
            assert [r["id"] for r in left] == [stale_taken]
        finally:
            await connection.close()
            await store.close()


@contextlib.contextmanager
def dies_before_answering(node: ClusterNode, marker: str) -> Iterator[asyncio.Event]:
    """``node`` stores the forwarded commands it runs and, from the first whose reply holds
    ``marker``, answers none, as a node that died between their commit and their answers;
    the event is set once it did."""
    stored, dead = asyncio.Event(), asyncio.Event()
    answer = node.relay.table.answer

    async def died(answers: list[tuple[int, str]]) -> None:
        if not stored.is_set() and all(marker not in reply for _, reply in answers):
            return await answer(answers)  # (a member's REST call spends their budget first)
        stored.set()
        await dead.wait()
        raise ConnectionResetError("the node died before it answered")

    node.relay.table.answer = died  # type: ignore[method-assign]
    try:
        yield stored
    finally:
        dead.set()


# A REST write through the read replica with no id of the caller's, each with its caller
# (the admin key, or ann's client token) and what its answer and the session show after it.
UNANSWERED: dict[str, tuple[str, str, str, dict[str, str], str]] = {
    "fact-by-admin": ("admin", "PUT", "/facts/deploy", {"value": "old"}, "deploy"),
    "fact-by-member": ("ann", "PUT", "/facts/deploy", {"value": "old"}, "deploy"),
    "message-by-member": ("ann", "POST", "/messages", {"text": "sent once"}, "message_id"),
}


@pytest.mark.parametrize("write", UNANSWERED)
async def test_a_command_stored_by_a_runner_that_died_unanswered_is_not_stored_again(
    tmp_path: Path, write: str
) -> None:
    """FX66: the node that runs the session stored a forwarded command and died before it
    answered; the node that takes the session over runs what was left unanswered again. A
    command with no id of its caller's (a REST change of facts, pins or the policy) was
    carried out a second time: after a newer acknowledged write, which it replaced."""
    caller, method, path, body, marker = UNANSWERED[write]
    async with run_by_first(tmp_path, forward_timeout_s=30.0) as (url, sid, first, second):
        dying, taking = cluster_of(first), cluster_of(second)
        token = ADMIN_KEY if caller == "admin" else await first.token(sid, "ann")
        with dies_before_answering(dying, marker) as stored:
            sent = asyncio.create_task(
                second.http.request(
                    method,
                    f"/api/v1/sessions/{sid}{path}",
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                )
            )
            await asyncio.wait_for(stored.wait(), 20)
            if path.startswith("/facts"):
                assert await facts(first, sid) == {"deploy": "old"}
                # A newer write, acknowledged by the node before it dies.
                assert await put_fact(first, sid, "new") == (200, {"facts": {"deploy": "new"}})
            await lapse_lease(dying, url, sid)
            assert await taking.promote(second.app.state.parley.rooms.loaded(sid))
            async with asyncio.timeout(20):
                answer = await sent
        assert answer.status_code < 300, answer.text
        if path.startswith("/facts"):
            assert answer.json() == {"facts": {"deploy": "new"}}
            assert await facts(second, sid) == {"deploy": "new"}
        else:
            transcript = await second.http.get(f"/api/v1/sessions/{sid}/transcript")
            texts = [m["content"] for m in transcript.json()["messages"]]
            assert texts == ["sent once"], texts


async def test_a_runner_that_loses_the_session_as_it_settles_answers_nothing_and_runs_nothing(
    tmp_path: Path,
) -> None:
    """The guards of a takeover whose lease is lost while it runs what its predecessor left
    (``ClusterNode._take``, ``CommandRelay._run_taken``): the command's write is refused at
    its fence, the node does not count as the session's runner, and the command is left
    unanswered for the node that runs the session next, which runs it once and answers."""
    async with run_by_first(tmp_path, forward_timeout_s=30.0) as (url, sid, first, second):
        frozen, taking = cluster_of(first), cluster_of(second)
        hold_drains(frozen)
        submitted = noting_submits(taking)
        sent = asyncio.create_task(put_fact(second, sid, "once"))
        await asyncio.wait_for(submitted.wait(), 20)
        await lapse_lease(frozen, url, sid)
        connection = await asyncpg.connect(url.replace("+asyncpg", ""))
        take, taken = taking.relay.table.take, asyncio.Event()

        async def taken_then_lost(*args: Any) -> list[OpenCommand]:
            commands = await take(*args)
            if commands and not taken.is_set():
                taken.set()  # another node takes the session over before they run
                await connection.execute(
                    "UPDATE session_leases SET holder = 'elsewhere', epoch = epoch + 1,"
                    " expires_at = clock_timestamp() + interval '60 s' WHERE session_id = $1",
                    sid,
                )
            return commands

        taking.relay.table.take = taken_then_lost  # type: ignore[method-assign]
        try:
            room = second.app.state.parley.rooms.loaded(sid)
            with pytest.raises(NotHolder):
                await taking.promote(room)
            assert taken.is_set()
            assert sid not in taking.running and sid not in taking.leases
            left = await connection.fetch("SELECT result FROM session_commands")
            assert [r["result"] for r in left] == [""]  # taken, not answered
            # The other node is gone: the next runner runs it, once, and answers it.
            await connection.execute(
                "UPDATE session_leases SET expires_at = clock_timestamp() - interval '1 s'"
            )
        finally:
            await connection.close()
        assert await taking.promote(await taking.reopened(room))
        async with asyncio.timeout(20):
            assert await sent == (200, {"facts": {"deploy": "once"}})
        assert await facts(second, sid) == {"deploy": "once"}
