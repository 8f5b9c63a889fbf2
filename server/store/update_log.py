"""What a document's update log (a session's, a side-thread's) does in the database beside
appending: squash it into a snapshot."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, and_, delete, insert
from sqlalchemy.ext.asyncio import AsyncConnection


async def squash(
    connection: AsyncConnection,
    snapshots: Table,
    updates: Table,
    key: str,
    snapshot: dict[str, Any],
) -> None:
    """Replace the snapshot of the log whose ``key`` column is ``snapshot[key]`` with
    ``snapshot`` (a row of ``snapshots``), and drop the updates it covers (ids up to its
    ``last_update_id``)."""
    owner = snapshot[key]
    await connection.execute(delete(snapshots).where(snapshots.c[key] == owner))
    await connection.execute(insert(snapshots).values(**snapshot))
    await connection.execute(
        delete(updates).where(
            and_(updates.c[key] == owner, updates.c.id <= snapshot["last_update_id"])
        )
    )
