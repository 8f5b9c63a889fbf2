"""The database under the store: write transactions (one writer at a time on SQLite),
reads, and the faults of both told as ``Unavailable``."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, PendingRollbackError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley.server.store.direct_sqlite import Plan, plan_for
from parley.server.store.group_commit import INSERT_UPDATE_SQLITE, GroupCommit
from parley.server.store.health import LOCK_HELD, LockTimeout, StorageHealth, lock_waited
from parley.server.store.lease_locks import LeaseLocks
from parley.server.store.sqlite_inline import (
    Checkpointer,
    InlineConnection,
    ThreadReads,
    UpdateAppender,
    file_path,
)
from parley.server.store.transaction import StoreTx
from parley.server.store.webhooks import Subscriptions
from parley.server.store.writer_turns import WriterTurns
from parley.session.errors import NotFound, Unavailable


@asynccontextmanager
async def _sqlite_transaction(
    connection: AsyncConnection, deadline: float
) -> AsyncIterator[sqlite3.Connection | None]:
    """SQLite: a write transaction on ``connection``. On a file (``InlineConnection``) it
    is begun and ended on the ``sqlite3`` connection beneath: ``BEGIN IMMEDIATE`` takes the
    write lock before the first statement, waiting for another process's off the loop
    (``InlineConnection.begin_immediate``); a statement through SQLAlchemy joins it (its
    autobegin sends nothing on SQLite) and SQLAlchemy's commit or rollback ends it,
    else ``sqlite3``'s own. Yields the ``sqlite3`` connection for the statements run
    beneath SQLAlchemy (``server.store.direct_sqlite``), unless something listens to the
    engine's statements (then None)."""
    inline = (await connection.get_raw_connection()).driver_connection
    if not isinstance(inline, InlineConnection):  # in memory: aiosqlite's own
        async with connection.begin():
            yield None
        return
    await inline.begin_immediate(deadline - asyncio.get_running_loop().time())
    dispatch = connection.sync_engine.dispatch
    listened = bool(dispatch.before_cursor_execute or dispatch.after_cursor_execute)
    try:
        yield None if listened else inline.raw
    except BaseException:
        if connection.in_transaction():
            await connection.rollback()
        else:
            inline.raw.rollback()
        raise
    if connection.in_transaction():
        await connection.commit()
    else:
        inline.raw.commit()


async def _commit_settled(commit: Coroutine[Any, Any, None], tx: StoreTx) -> None:
    """Commit, and learn whether it did even if this task is cancelled meanwhile (then
    the cancel is raised once ``tx.committed`` says it): a commit the server carried out,
    its answer unread, was taken for a failed write (review RA-2: a removed member's
    socket, closed as their write committed, cancelled it; the room, finding the write
    stored, was given up and every socket of the session closed 1013)."""
    committing = asyncio.ensure_future(commit)
    cancelled = False
    while not committing.done():
        try:
            await asyncio.wait((committing,))
        except asyncio.CancelledError:
            cancelled = True
    committing.result()  # a commit that failed: not stored
    tx.committed = True
    if cancelled:
        raise asyncio.CancelledError


class Database:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        lock_timeout_s: float = 5.0,
        health: StorageHealth | None = None,
    ) -> None:
        self.engine = engine
        # SQLite lets one transaction write at a time, and its calls run in the event
        # loop's thread (server.store.sqlite_inline): a second writer would block the loop in
        # SQLite's busy handler while the first, needing the loop, could not finish.
        # Writers queue here instead, first come, first served, but for the group
        # commit's rounds (``WriterTurns``). PostgreSQL locks rows, not the database: no
        # queue there.
        self._writers: WriterTurns | None = (
            WriterTurns() if engine.dialect.name == "sqlite" else None
        )
        # SQLite: how long a write may wait, from its call, for its turn and for the
        # write lock another process may hold; past it the write is refused.
        self.lock_timeout_s = lock_timeout_s
        # SQLite: a write's budget also covers its wait for its session's turn (a write
        # queued behind its session's others waits for them, not for them and then its own).
        self.turns_in_budget = self._writers is not None
        self.health = health or StorageHealth()
        self.leaves_entries = engine.dialect.name == "postgresql"  # (``StoreTx.insert_entry``)
        path = file_path(engine.url) if engine.dialect.name == "sqlite" else None
        self.checkpointer = Checkpointer(path) if path else None
        self._appender = UpdateAppender(path, INSERT_UPDATE_SQLITE) if path else None
        self._thread_reads = ThreadReads(path) if path else None
        self.group = GroupCommit(self, alone=self._updates_alone if path else None)
        # Called after a commit that wrote webhook deliveries (the sender's wake-up).
        self.on_outbox: Callable[[], None] | None = None
        # The event webhook subscriptions every event write here matches against.
        self.subscriptions = Subscriptions()
        # Cluster mode: told of each lease row a transaction here locks (the node's
        # ``LeaseTable``, so its renewal knows the node's own transactions).
        self.lease_locks: LeaseLocks | None = None

    @asynccontextmanager
    async def transaction(
        self,
        what: str = "write",
        *,
        lock_timeout_s: float | None = None,
        group_round: bool = False,
    ) -> AsyncIterator[StoreTx]:
        """A write transaction; database faults surface as ``Unavailable`` (and are told to
        ``health``). ``what`` names the write in the refusal log; ``lock_timeout_s``
        replaces the store's own budget; ``group_round``: a round of the group commit
        (it waits for the one write holding the turn, not for every write queued).

        Do not open one inside another: on SQLite the second would wait for the first."""
        budget = self.lock_timeout_s if lock_timeout_s is None else lock_timeout_s
        deadline = asyncio.get_running_loop().time() + budget
        try:
            async with self._turn(deadline, group_round), self.engine.connect() as connection:
                if self._writers is None:
                    tx = StoreTx(connection, self.subscriptions, lease_locks=self.lease_locks)
                    with tx.ending():
                        async with connection.begin() as begun:
                            yield tx
                            tx.claimed.require_settled()
                            await tx.send_notifications()
                            await _commit_settled(begun.commit(), tx)
                else:
                    # (``ending`` outside the transaction, which ``direct`` comes from)
                    with ExitStack() as ended:
                        async with _sqlite_transaction(connection, deadline) as direct:
                            tx = StoreTx(connection, self.subscriptions, direct)
                            ended.enter_context(tx.ending())
                            yield tx
                            tx.claimed.require_settled()
                            await tx.send_notifications()
                        # Before ``ending``, as on PostgreSQL; what follows (the
                        # connection's close) may be cancelled.
                        tx.committed = True
            if self.checkpointer is not None:
                self.checkpointer.wrote()
            if tx.outboxed and self.on_outbox is not None:
                self.on_outbox()
        except (
            OperationalError,
            DBAPIError,
            OSError,
            sqlite3.Error,
            PendingRollbackError,  # a statement after one the database failed (review rx-2)
        ) as exc:
            if isinstance(exc, IntegrityError):
                if foreign_key_violation(exc):
                    # What the write belongs to (its session, a subscription, a side-thread)
                    # was deleted meanwhile, on another node, say: not the database's fault.
                    raise NotFound(
                        "what this write belongs to was deleted meanwhile; nothing was stored"
                    ) from exc
                raise
            raise self._refused(exc, what) from exc
        self.health.wrote()

    async def _updates_alone(self, rows: list[tuple[str, bytes]]) -> list[int]:
        """SQLite file: a group commit round of sessions' updates and nothing else, in a
        transaction of its own made beneath SQLAlchemy (``UpdateAppender``); refused as
        ``transaction`` refuses."""
        assert self._appender is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lock_timeout_s
        try:
            async with self._turn(deadline, group_round=True):
                ids = await self._appender.append(rows, deadline - loop.time())
        except (OSError, sqlite3.Error) as exc:
            if isinstance(exc, sqlite3.IntegrityError):  # a session deleted meanwhile
                raise
            raise self._refused(exc, "document updates") from exc
        if self.checkpointer is not None:
            self.checkpointer.wrote()
        self.health.wrote()
        return ids

    def _refused(self, exc: Exception, what: str) -> Unavailable:
        """What a write that failed with ``exc`` (the database's fault, not the data's)
        raises, told to ``health`` first."""
        self.health.refuse(exc, what)
        if isinstance(exc, LockTimeout):
            return Unavailable(
                "another process holds the database's write lock; nothing was stored"
            )
        if lock_waited(exc):  # PostgreSQL (review RC-5: it was called a database outage)
            return Unavailable(LOCK_HELD + "; nothing was stored")
        return Unavailable("the database is unavailable; nothing was stored")

    @asynccontextmanager
    async def _turn(self, deadline: float, group_round: bool) -> AsyncIterator[None]:
        """SQLite: this process's writers one at a time, each waiting until ``deadline``."""
        if self._writers is None:
            yield
            return
        try:
            async with asyncio.timeout_at(deadline):
                await self._writers.acquire(round_=group_round)
        except TimeoutError:
            raise LockTimeout("the writes before this one held the database too long") from None
        try:
            yield
        finally:
            self._writers.release()

    async def probe_write(self, lock_timeout_s: float) -> None:
        """Write without changing anything (``/readyz`` while writes fail): ``Unavailable``
        unless the database takes writes now."""
        async with self.transaction("probe", lock_timeout_s=lock_timeout_s) as tx:
            await tx.connection.exec_driver_sql(
                "UPDATE alembic_version SET version_num = version_num"
            )

    async def close(self) -> None:
        """Finish the group commit's rounds, checkpoint, then close every connection."""
        await self.group.close()
        if self._appender is not None:
            await self._appender.close()
        if self.checkpointer is not None:
            await self.checkpointer.close()
        if self._thread_reads is not None:
            self._thread_reads.close()
        await self.engine.dispose()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as connection:
                yield connection
        except (OperationalError, DBAPIError, OSError) as exc:
            raise Unavailable("the database is unavailable") from exc

    async def read_rows(
        self, *reads: tuple[Any, Mapping[str, Any]]
    ) -> list[Sequence[Sequence[Any]]]:
        """The rows of each of ``reads`` (a select marked ``direct``, its parameters), read
        together. On a SQLite file in a worker thread, in one read transaction
        (``ThreadReads``): a large row (a session's snapshot) is read and copied off the
        loop. Elsewhere through the engine (PostgreSQL's driver reads off the loop)."""
        plans = self._thread_plans(reads)
        if plans is None:
            async with self.read() as connection:
                return [
                    (await connection.execute(select_, dict(parameters))).all()
                    for select_, parameters in reads
                ]

        def reading(connection: sqlite3.Connection) -> list[Sequence[Sequence[Any]]]:
            ran = zip(plans, reads, strict=True)
            return [plan.run(connection, given).all() for plan, (_, given) in ran]

        assert self._thread_reads is not None
        try:
            return await self._thread_reads.read(reading)
        except (DBAPIError, OSError, sqlite3.Error) as exc:
            raise Unavailable("the database is unavailable") from exc

    def _thread_plans(self, reads: Sequence[tuple[Any, Mapping[str, Any]]]) -> list[Plan] | None:
        """The plans of ``reads`` for ``ThreadReads``; None: they go through the engine (as
        every statement does while something listens to the engine's: a test counting)."""
        dispatch = self.engine.sync_engine.dispatch
        if self._thread_reads is None or dispatch.before_cursor_execute:
            return None
        plans = [plan_for(select_, given, self.engine.dialect) for select_, given in reads]
        return None if None in plans else [plan for plan in plans if plan is not None]

    async def ping(self) -> None:
        async with self.read() as connection:
            await connection.execute(select(1))


def foreign_key_violation(exc: IntegrityError) -> bool:
    """Whether ``exc`` is a foreign key's violation (a row whose parent is gone), not a
    unique key's (a command id stored before, say), on SQLite or PostgreSQL."""
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code == "23503" or "foreign key" in str(orig).lower()
