"""Reading a session's update log from where a read replica left off.

The running node may squash the log into a snapshot at any time (deleting the updates it
covers). The snapshot and the tail are read in one REPEATABLE READ transaction, so the two
come from the same moment: a replica that fell behind a squash gets the snapshot (CRDT
updates are idempotent, so applying state it already has changes nothing) and then every
update after it, and never skips one.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.cluster.lease import database_errors
from parley.server.store.tables import doc_snapshots, doc_updates


@dataclass(frozen=True, slots=True)
class Tail:
    snapshot: bytes | None  # set when the log was squashed past ``after``
    updates: list[bytes]
    last_id: int  # the update id the replica has applied once it applied this
    complete: bool  # False: more updates follow, read again from ``last_id``


async def read_tail(engine: AsyncEngine, session_id: str, after: int, limit: int) -> Tail:
    async with database_errors(), engine.connect() as connection:
        connection = await connection.execution_options(isolation_level="REPEATABLE READ")
        async with connection.begin():
            snap = (
                await connection.execute(
                    select(doc_snapshots.c.data, doc_snapshots.c.last_update_id).where(
                        and_(
                            doc_snapshots.c.session_id == session_id,
                            doc_snapshots.c.last_update_id > after,
                        )
                    )
                )
            ).first()
            start = after if snap is None else max(after, int(snap.last_update_id))
            rows = (
                await connection.execute(
                    select(doc_updates.c.id, doc_updates.c.data)
                    .where(and_(doc_updates.c.session_id == session_id, doc_updates.c.id > start))
                    .order_by(doc_updates.c.id)
                    .limit(limit)
                )
            ).all()
    return Tail(
        snapshot=None if snap is None else bytes(snap.data),
        updates=[bytes(row.data) for row in rows],
        last_id=int(rows[-1].id) if rows else start,
        complete=len(rows) < limit,
    )
