"""The group commit (many sessions' updates, one transaction) and SQLite from the loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from parley.server.runtime.writer import settled
from parley.server.store.db import create_engine, migrate
from parley.server.store.group_commit import MembersMoved, Outcome
from parley.server.store.sessions import Store, StoreTx
from parley.session.errors import Unavailable
from tests.server.test_storage_faults import read_only, release, write_lock_held


@contextlib.asynccontextmanager
async def store_with_sessions(
    url: str, count: int, lock_timeout_s: float = 5.0
) -> AsyncIterator[Store]:
    """A store on ``url`` holding sessions ``s0``, ``s1``, ..."""
    store = Store(create_engine(url), lock_timeout_s=lock_timeout_s)
    try:
        for n in range(count):
            await store.create_session(f"s{n}", "t", "queue", 0)
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    async with store_with_sessions(database_url, 3) as store:
        yield store


async def stored_updates(store: Store, session_id: str) -> list[bytes]:
    return (await store.load_doc(session_id)).updates


async def test_updates_submitted_together_commit_in_one_round_in_order(store: Store) -> None:
    group = store.group
    futures = [group.submit(f"s{n % 3}", bytes([n]), None) for n in range(30)]
    ids = await asyncio.gather(*futures)
    assert group.rounds == 1
    assert ids == sorted(ids) and len(set(ids)) == 30
    for n in range(3):
        assert await stored_updates(store, f"s{n}") == [bytes([k]) for k in range(n, 30, 3)]


async def test_what_arrives_during_a_round_joins_the_next(store: Store) -> None:
    group = store.group
    first = group.submit("s0", b"a", None)
    await asyncio.sleep(0)  # the first round starts
    later = [group.submit("s1", bytes([n]), None) for n in range(5)]
    await asyncio.gather(first, *later)
    assert group.rounds <= 2
    assert await stored_updates(store, "s1") == [bytes([n]) for n in range(5)]


async def test_a_round_calls_each_on_stored_before_any_waiter_wakes(store: Store) -> None:
    """What must follow a commit at once (the broadcast) is done by the round itself, in
    the order the updates were stored, not when each writer's turn on the loop comes
    (issue #22: that wait was a third of a streamed token's way to the sockets)."""
    group = store.group
    # Per call: the writer, its update's id, how many writers had woken by then.
    seen: list[tuple[str, int, int]] = []
    woken: list[str] = []

    async def writer(name: str, session_id: str) -> None:
        def stored(update_id: int) -> None:
            seen.append((name, update_id, len(woken)))

        update_id = await group.submit(session_id, name.encode(), None, on_stored=stored)
        woken.append(name)
        assert update_id == next(i for n, i, _ in seen if n == name)

    names = [f"w{n}" for n in range(6)]
    await asyncio.gather(*(writer(name, f"s{n % 3}") for n, name in enumerate(names)))
    assert group.rounds == 1
    assert [name for name, _, _ in seen] == names
    assert [i for _, i, _ in seen] == sorted(i for _, i, _ in seen)
    assert [w for _, _, w in seen] == [0] * 6  # no writer had woken yet
    assert sorted(woken) == names


async def test_an_on_stored_that_raises_fails_its_own_outcome_only(store: Store) -> None:
    """The update is stored, but what was to follow it did not happen: its writer is told
    (and reads the document back from the store); the round's other writers are not."""
    group = store.group

    def broken(_: int) -> None:
        raise RuntimeError("the broadcast failed")

    calls: list[int] = []
    failed = group.submit("s0", b"stored", None, on_stored=broken)
    other = group.submit("s1", b"also", None, on_stored=calls.append)
    with pytest.raises(RuntimeError, match="the broadcast failed"):
        await failed
    assert calls == [await other]
    assert await stored_updates(store, "s0") == [b"stored"]


async def test_an_update_refused_or_not_stored_never_calls_on_stored(store: Store) -> None:
    group = store.group
    calls: list[int] = []
    orphan = group.submit("no-such-session", b"lost", None, on_stored=calls.append)
    with pytest.raises(Unavailable):
        await orphan
    refused = group.submit("s1", b"refused", Fence(False), on_stored=calls.append)
    moved = group.submit("s2", b"judged before", Fence(True, moved=True), on_stored=calls.append)
    with pytest.raises(LookupError):
        await refused
    with pytest.raises(MembersMoved):
        await moved
    assert calls == []


async def test_text_refused_to_be_judged_again_stays_refused_when_the_round_is_retried(
    store: Store,
) -> None:
    """Cluster mode: one session's update of the round breaks a constraint (its session
    was deleted), so the others are stored one by one. A session's text its fence refused
    in the failed round (the members changed: judged by the old ones) is not stored by the
    retry, which the fence, having read the members since, would let by."""
    group = store.group
    fence = Fence(True, moved=True)
    orphan = group.submit("no-such-session", b"lost", None)
    moved = group.submit("s0", b"judged by the old members", fence)
    other = group.submit("s1", b"kept", Fence(True))
    with pytest.raises(Unavailable):
        await orphan
    with pytest.raises(MembersMoved):
        await moved
    assert isinstance(await other, int)
    assert await stored_updates(store, "s0") == []
    assert await stored_updates(store, "s1") == [b"kept"]


async def test_an_update_of_a_deleted_session_fails_alone(store: Store) -> None:
    group = store.group
    good = group.submit("s0", b"kept", None)
    orphan = group.submit("no-such-session", b"lost", None)
    other = group.submit("s1", b"kept too", None)
    assert isinstance(await good, int) and isinstance(await other, int)
    with pytest.raises(Unavailable):
        await orphan
    assert await stored_updates(store, "s0") == [b"kept"]
    assert await stored_updates(store, "s1") == [b"kept too"]


class Fence:
    def __init__(
        self, allowed: bool, *, moved: bool = False, fault: Exception | None = None
    ) -> None:
        self.allowed = allowed
        self.moved = moved  # the members changed since the text was judged
        self.fault = fault  # the database's, raised from the fence's statement
        self.told = 0  # updates stored while it held the session

    async def check(
        self,
        tx: StoreTx,
        member: str | None = None,
        token: str | None = None,
        *,
        appended: bool = False,
    ) -> None:
        if self.fault is not None:
            raise self.fault
        if not self.allowed:
            raise LookupError("another node holds this session")
        if self.moved and appended:
            self.moved = False  # read again: the next round is judged by them
            raise MembersMoved("the members changed")

    def published(self, tx: StoreTx) -> None:
        self.told += 1

    def kept_private(self, tx: StoreTx, entry_id: str) -> None:
        pass

    def thread_changed(self, tx: StoreTx, thread_id: str, owner: str) -> None:
        pass

    def holds(self) -> bool:
        return self.allowed


async def test_a_fence_refuses_its_own_session_only(store: Store) -> None:
    group = store.group
    held, lost = Fence(True), Fence(False)
    ours = [group.submit("s0", bytes([n]), held) for n in range(3)]
    theirs = group.submit("s1", b"x", lost)
    plain = group.submit("s2", b"y", None)
    ids = await asyncio.gather(*ours)
    assert len(set(ids)) == held.told == 3
    with pytest.raises(LookupError):
        await theirs
    assert isinstance(await plain, int)
    assert await stored_updates(store, "s1") == []


async def test_text_judged_before_a_change_of_members_is_refused_to_be_judged_again(
    store: Store,
) -> None:
    """Cluster mode: a session's streamed text reached the round after its members changed
    on another node (its fence read them again): refused ``MembersMoved``, that session's
    alone; the text judged again is stored."""
    group = store.group
    moved = Fence(True, moved=True)
    refused = group.submit("s0", b"judged before", moved)
    other = group.submit("s1", b"x", Fence(True))
    with pytest.raises(MembersMoved):
        await refused
    assert isinstance(await other, int)
    assert isinstance(await group.submit("s0", b"judged again", moved), int)
    assert await stored_updates(store, "s0") == [b"judged again"]


async def test_a_database_fault_in_a_fence_fails_the_round_unavailable(store: Store) -> None:
    """Review rx-2: a PostgreSQL connection killed as a fence read the lease row failed
    that session's text with the driver's own error, and the rest of the round, on the
    transaction it broke, with SQLAlchemy's ``PendingRollbackError``: the runs ended
    ``internal_error`` (the code of a bug), not ``storage_error``. A database fault in a
    fence is the round's: every update of it is ``Unavailable``, nothing stored."""
    lost = OperationalError("SELECT 1", {}, ConnectionResetError("connection was closed"))
    futures = [
        store.group.submit("s0", b"a", Fence(True, fault=lost)),
        store.group.submit("s1", b"b", Fence(True)),
        store.group.submit("s2", b"c", None),
    ]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results), results
    assert [await stored_updates(store, s) for s in ("s0", "s1", "s2")] == [[], [], []]


async def test_a_database_fault_fails_every_update_of_the_round(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.connection.execute(text("DROP TABLE doc_updates"))
    futures = [store.group.submit(f"s{n}", b"z", None) for n in range(3)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results), results


async def test_sqlite_runs_in_the_loops_thread_and_the_wal_is_checkpointed(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}"
    await asyncio.to_thread(migrate, url)
    engine = create_engine(url)
    threads: set[int] = set()

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def where(*_: object) -> None:
        threads.add(threading.get_ident())

    store = Store(engine)
    assert store.checkpointer is not None
    store.checkpointer.every_s = 0.05
    wal = tmp_path / "inline.db-wal"
    try:
        await store.create_session("s", "t", "queue", 0)
        for _ in range(300):
            await store.group.submit("s", os.urandom(2000), None)
        assert threads == {threading.get_ident()}
        async with store.read() as connection:
            never = (await connection.execute(text("PRAGMA wal_autocheckpoint"))).scalar()
        assert never == 0  # commits on the loop never fsync for a checkpoint
        assert wal.stat().st_size > 300 * 2000
        for _ in range(100):
            if store.checkpointer.last is not None:
                break
            await asyncio.sleep(0.05)
        frames, copied = store.checkpointer.last or (0, -1)
        assert frames > 0 and copied == frames, "the checkpointer left frames in the WAL"
        assert len(await stored_updates(store, "s")) == 300
    finally:
        await store.close()


async def test_a_writer_cancelled_mid_round_still_learns_its_outcome() -> None:
    """A streaming run interrupted while its text commits must know whether it was
    stored (to send it, or to roll the document back) before it unwinds."""
    round_done = Outcome(loop=asyncio.get_running_loop())
    waiter = asyncio.create_task(settled(round_done))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.sleep(0)
    waiter.cancel()  # twice, even
    await asyncio.sleep(0)
    assert not waiter.done()
    round_done.set_result(7)
    assert await waiter is True
    assert round_done.result() == 7


async def test_a_writer_cancelled_mid_round_learns_a_failed_round_too() -> None:
    round_done = Outcome(loop=asyncio.get_running_loop())
    waiter = asyncio.create_task(settled(round_done))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.sleep(0)
    assert not waiter.done() and not round_done.cancelled()
    round_done.set_exception(Unavailable("the round failed"))
    assert await waiter is True
    with pytest.raises(Unavailable):
        round_done.result()


async def test_a_round_wakes_its_writer_without_a_hop_between() -> None:
    """The outcome is awaited directly: the writer runs on the loop's next pass after the
    round settles it (through ``asyncio.wait`` it took two)."""
    round_done = Outcome(loop=asyncio.get_running_loop())
    waiter = asyncio.create_task(settled(round_done))
    await asyncio.sleep(0)
    round_done.set_result(3)
    await asyncio.sleep(0)  # one pass of the loop
    assert waiter.done() and waiter.result() is False


async def test_a_round_cancelled_at_shutdown_settles_what_waits_for_the_next(
    store: Store,
) -> None:
    group = store.group
    group.max_round = 1  # one update a round: the others wait in the queue
    alone = group.alone
    if alone is not None:  # SQLite's round waits on nothing: make it wait once, as I/O would

        async def waits(rows: list[tuple[str, bytes]]) -> list[int]:
            await asyncio.sleep(0)
            return await alone(rows)

        group.alone = waits
    first = group.submit("s0", b"a", None)
    waiting = [group.submit("s1", bytes([n]), None) for n in range(3)]
    await asyncio.sleep(0)  # the first round starts
    task = group._task
    assert task is not None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    for outcome in [first, *waiting]:
        assert outcome.done()  # none is left waiting (an Outcome cannot be cancelled)
        if outcome is not first:
            assert isinstance(outcome.exception(), Unavailable)


# -- SQLite: rounds of sessions' updates alone are made beneath SQLAlchemy ----------------


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'rounds.db'}"
    await asyncio.to_thread(migrate, url)
    async with store_with_sessions(url, 2, lock_timeout_s=10) as store:
        yield store


async def test_sqlite_a_round_alone_is_made_beneath_sqlalchemy_and_stores_in_order(
    sqlite_store: Store,
) -> None:
    statements: list[str] = []
    event.listen(
        sqlite_store.engine.sync_engine,
        "before_cursor_execute",
        lambda *args: statements.append(args[2]),
    )
    futures = [sqlite_store.group.submit(f"s{n % 2}", bytes([n]), None) for n in range(9)]
    ids = await asyncio.gather(*futures)
    assert ids == sorted(ids) and len(set(ids)) == 9
    assert statements == []  # not one statement through the engine
    for n in range(2):
        assert await stored_updates(sqlite_store, f"s{n}") == [bytes([k]) for k in range(n, 9, 2)]
    # A side-thread's update or a fence takes the engine's transaction, as before.
    fenced = await sqlite_store.group.submit("s0", b"fenced", Fence(True))
    assert fenced > ids[-1] and any("doc_updates" in s for s in statements)


async def test_sqlite_a_round_waits_off_the_loop_for_another_process_s_write_lock(
    sqlite_store: Store, tmp_path: Path
) -> None:
    async with write_lock_held(tmp_path / "rounds.db") as holder:
        stored = sqlite_store.group.submit("s0", b"after the lock", None)
        for _ in range(5):  # the round is under way, waiting for the lock in a thread
            await asyncio.sleep(0)
        assert not stored.done()
        await release(holder)
        update_id = await stored
    assert isinstance(update_id, int)
    assert await stored_updates(sqlite_store, "s0") == [b"after the lock"]
    assert sqlite_store.health.failing is None


async def test_sqlite_a_round_refused_for_a_held_lock_is_unavailable_and_stores_nothing(
    sqlite_store: Store, tmp_path: Path
) -> None:
    sqlite_store.lock_timeout_s = 0.2
    async with write_lock_held(tmp_path / "rounds.db"):
        futures = [sqlite_store.group.submit(f"s{n}", b"refused", None) for n in range(2)]
        results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, Unavailable) and "write lock" in str(r) for r in results), results
    assert sqlite_store.health.failing is not None
    assert isinstance(await sqlite_store.group.submit("s0", b"later", None), int)
    assert sqlite_store.health.failing is None
    assert await stored_updates(sqlite_store, "s0") == [b"later"]
    assert await stored_updates(sqlite_store, "s1") == []


async def test_sqlite_a_round_on_a_read_only_database_is_unavailable_and_then_recovers(
    sqlite_store: Store, tmp_path: Path
) -> None:
    await sqlite_store.group.submit("s0", b"first", None)  # the WAL file exists
    with read_only(tmp_path / "rounds.db", tmp_path / "rounds.db-wal"):
        with pytest.raises(Unavailable):
            await sqlite_store.group.submit("s0", b"refused", None)
        assert sqlite_store.health.failing is not None
    await sqlite_store.group.submit("s1", b"after", None)
    assert await stored_updates(sqlite_store, "s0") == [b"first"]
    assert await stored_updates(sqlite_store, "s1") == [b"after"]


async def test_sqlite_a_round_left_open_is_rolled_back_before_the_next(
    sqlite_store: Store,
) -> None:
    await sqlite_store.group.submit("s0", b"first", None)
    appender = sqlite_store._appender
    assert appender is not None and appender._connection is not None
    raw = appender._connection.raw
    raw.execute("BEGIN IMMEDIATE")  # as a round whose rollback failed would leave it
    raw.execute(appender.insert_sql, ("s0", b"never committed"))
    assert isinstance(await sqlite_store.group.submit("s0", b"second", None), int)
    assert await stored_updates(sqlite_store, "s0") == [b"first", b"second"]
