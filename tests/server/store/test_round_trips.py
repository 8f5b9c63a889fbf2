"""Round trips to PostgreSQL per acknowledged prompt: counted (``bench.ack_round_trips``),
never timed. The ack's write is one statement: the entry, the document update, the
counters and the events, run as a transaction of its own (no BEGIN, no COMMIT). A cluster
node fences its lease first, in a transaction: BEGIN, the fence, the statement (with the
update's notification), COMMIT. A prompt whose run starts with it adds nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from bench.ack_round_trips import RoundTrips, count, holder_fence
from parley.server.cluster.node import CHANNEL_DOC
from parley.server.runtime.room import SessionRoom
from parley.server.store.db import create_engine
from parley.server.store.sessions import Store
from parley.session.queue import Policy
from tests.conftest import make_settings, postgres_database

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize(("fenced", "most"), [(False, 1), (True, 4)])
async def test_an_acked_prompt_costs_one_round_trip_on_postgresql_four_on_a_cluster(
    fenced: bool, most: int
) -> None:
    async with postgres_database(migrated=True) as url:
        counted = await count(url, prompts=3, fenced=fenced)
    for trips in counted:
        assert len(trips) <= most, trips.calls


async def test_only_the_counting_threads_round_trips_are_counted() -> None:
    """The suite drops a finished test's database on a thread of its own while the next
    test runs: that thread's statements (a ``DROP DATABASE``, through asyncpg too) are not
    the counted code's round trips."""
    async with postgres_database() as url:
        plain = url.replace("postgresql+asyncpg://", "postgresql://")

        async def select_one() -> None:
            connection = await asyncpg.connect(plain)
            try:
                await connection.execute("SELECT 1")
            finally:
                await connection.close()

        with RoundTrips().counting() as trips:
            await asyncio.to_thread(asyncio.run, select_one())
            assert trips.calls == []
            await select_one()
        assert ("Connection.execute", "SELECT 1") in trips.calls


async def test_a_cluster_nodes_ack_notifies_its_followers_in_the_counters_statement() -> None:
    """The update's notification (followers apply the update on it) rides in the statement
    that stores the update and moves the counters, and is delivered on the commit."""
    async with postgres_database(migrated=True) as url:
        listener = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        heard: asyncio.Queue[str] = asyncio.Queue()
        await listener.add_listener(CHANNEL_DOC, lambda *args: heard.put_nowait(args[-1]))
        try:
            counted = await count(url, prompts=2, fenced=True)
            async with asyncio.timeout(10):
                got = [await heard.get() for _ in range(3)]  # the warming prompt's too
        finally:
            await listener.close()
    assert got == ["s", "s", "s"]
    for trips in counted:  # BEGIN, the fence, the write's statement, COMMIT
        assert len(trips) <= 4, trips.calls


async def test_a_prompt_and_the_start_of_its_run_cost_one_round_trip_together() -> None:
    """With the session's runner idle, the ack's write starts the run too, at no round trip
    more: the quotas the core judges the start by are the room's (read on load and when
    the admin API changes them), and the prompt's row is inserted running, not inserted
    and then updated."""
    async with postgres_database(migrated=True) as url:
        counted = await count(url, prompts=3, runner=True)
    for trips in counted:
        assert len(trips) <= 1, trips.calls


async def test_a_cluster_round_of_several_sessions_notifies_them_all_in_one_statement(
    tmp_path: Path,
) -> None:
    """A group-commit round on a cluster node stores several sessions' updates: each one's
    notification (the followers apply the update on it) goes in one statement before the
    commit, not one round trip each, and every one of them is delivered."""
    sessions = ["s1", "s2", "s3"]
    async with postgres_database(migrated=True) as url:
        store = Store(create_engine(url))
        listener = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        heard: asyncio.Queue[str] = asyncio.Queue()
        await listener.add_listener(CHANNEL_DOC, lambda *args: heard.put_nowait(args[-1]))
        try:
            fences = []
            rooms = []  # a fence holds its room weakly: the room's writer holds it
            for session_id in sessions:
                await store.create_session(session_id, "t", Policy.QUEUE.value, 0)
                room = SessionRoom(session_id, store=store, settings=make_settings(url, tmp_path))
                rooms.append(room)
                fences.append(await holder_fence(store, room))
            trips = RoundTrips()
            with trips.counting():
                stored = [
                    store.group.submit(session_id, b"update", fence)
                    for session_id, fence in zip(sessions, fences, strict=True)
                ]
                ids = await asyncio.gather(*stored)
            assert len(set(ids)) == len(sessions)
            notifying = [  # (a statement new to its connection is prepared first)
                query
                for what, query in trips.calls
                if "pg_notify" in query and what != "Connection.prepare"
            ]
            assert len(notifying) == 1, trips.calls
            async with asyncio.timeout(10):
                got = sorted([await heard.get() for _ in sessions])
            assert got == sessions
        finally:
            await listener.close()
            await store.close()


async def test_a_round_of_several_sessions_updates_is_one_round_trip(tmp_path: Path) -> None:
    """A group-commit round off a cluster stores several sessions' streamed text in one
    statement, run as a transaction of its own: no BEGIN, no COMMIT."""
    sessions = ["s1", "s2", "s3"]
    async with postgres_database(migrated=True) as url:
        store = Store(create_engine(url))
        try:
            for session_id in sessions:
                await store.create_session(session_id, "t", Policy.QUEUE.value, 0)
            await asyncio.gather(*(store.group.submit(s, b"warm", None) for s in sessions))
            trips, rounds = RoundTrips(), store.group.rounds
            with trips.counting():
                stored = [store.group.submit(s, f"u-{s}".encode(), None) for s in sessions]
                ids = await asyncio.gather(*stored)
            assert len(set(ids)) == len(sessions)
            sent = [c for c in trips.calls if c[0] != "Connection.prepare"]  # (new statement)
            assert len(sent) == store.group.rounds - rounds, trips.calls  # one a round
            for session_id in sessions:
                updates = (await store.load_doc(session_id)).updates
                assert updates == [b"warm", f"u-{session_id}".encode()]
        finally:
            await store.close()
