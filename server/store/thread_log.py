"""Side-threads' documents in the database: each thread's update log and snapshot
(``thread_doc_updates``, ``thread_doc_snapshots``), written in the room's transaction
beside the thread's rows, read when a document is opened, and tailed by followers."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.server.store.rows import StoredDoc
from parley.server.store.tables import side_threads, thread_doc_snapshots
from parley.server.store.tables import thread_doc_updates as updates
from parley.server.store.update_log import squash

# Built once: streamed side-thread text appends through it (see ``command_statements``).
_APPEND = insert(updates).returning(updates.c.id, sort_by_parameter_order=True)


async def append(connection: AsyncConnection, rows: Sequence[tuple[str, str, bytes]]) -> list[int]:
    """Store ``rows`` (session id, thread id, update) in one statement; their ids, in order."""
    if not rows:
        return []
    statement = _APPEND
    parameters = [{"session_id": s, "thread_id": t, "data": data} for s, t, data in rows]
    result = await connection.execute(statement, parameters)
    return [int(row[0]) for row in result]


async def write_snapshot(
    connection: AsyncConnection,
    session_id: str,
    thread_id: str,
    data: bytes,
    last_update_id: int,
    now: int,
) -> None:
    """Replace the thread's snapshot and drop the updates it covers."""
    snapshot = {
        "thread_id": thread_id,
        "session_id": session_id,
        "data": data,
        "last_update_id": last_update_id,
        "created_at": now,
    }
    await squash(connection, thread_doc_snapshots, updates, "thread_id", snapshot)


async def delete_log(connection: AsyncConnection, thread_id: str) -> None:
    for table in (updates, thread_doc_snapshots):
        await connection.execute(delete(table).where(table.c.thread_id == thread_id))


async def load(connection: AsyncConnection, thread_id: str, after: int = 0) -> StoredDoc:
    """The thread's document from its snapshot (if it covers past ``after``) and the
    updates after ``after``. The updates are read first: a squash committed between the
    two reads only makes the snapshot cover some of them again (applying an update twice
    changes nothing), so no update is ever missed, whatever the isolation level."""
    rows = (
        await connection.execute(
            select(updates.c.id, updates.c.data)
            .where(and_(updates.c.thread_id == thread_id, updates.c.id > after))
            .order_by(updates.c.id)
        )
    ).all()
    snap = (
        await connection.execute(
            select(thread_doc_snapshots.c.data, thread_doc_snapshots.c.last_update_id).where(
                and_(
                    thread_doc_snapshots.c.thread_id == thread_id,
                    thread_doc_snapshots.c.last_update_id > after,
                )
            )
        )
    ).first()
    # Every update read is kept, even one the snapshot covers: SQLite may give a new
    # update the id of one a squash deleted, so an id is no proof of being covered.
    covered = after if snap is None else int(snap.last_update_id)
    return StoredDoc(
        snapshot=None if snap is None else bytes(snap.data),
        updates=[bytes(row.data) for row in rows],
        updates_since_snapshot=len(rows),
        last_update_id=max(covered, int(rows[-1].id) if rows else after),
    )


async def thread_exists(connection: AsyncConnection, thread_id: str) -> bool:
    found = select(side_threads.c.id).where(side_threads.c.id == thread_id)
    return (await connection.execute(found)).first() is not None
