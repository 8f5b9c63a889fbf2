"""The ``left_clients`` rows: the awareness client ids whose sockets closed, kept for their
members (``session.presence``) across unloads, restarts and nodes.

One row per client id of a session, its latest leaving; a write replaces an older one
only (two nodes' writers may write out of order). A write lets go of the session's rows
older than ``KEEP_LEFT_S`` and, of each member it wrote, those past their newest
``MAX_LEFT_PER_MEMBER``: what a room's load reads is bounded whatever the churn.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.server.store.tables import left_clients
from parley.session import presence
from parley.session.presence import LeftClient

_SESSION = left_clients.c.session_id == bindparam("session_id")
_PRUNE = delete(left_clients).where(_SESSION, left_clients.c.left_at < bindparam("before"))
_MEMBERS_NEWEST = (
    select(left_clients.c.client_id)
    .where(_SESSION, left_clients.c.user_id == bindparam("user_id"))
    .order_by(left_clients.c.left_at.desc(), left_clients.c.client_id.desc())
    .limit(bindparam("kept"))
)
_TRIM = delete(left_clients).where(
    _SESSION,
    left_clients.c.user_id == bindparam("user_id"),
    left_clients.c.client_id.not_in(_MEMBERS_NEWEST.scalar_subquery()),
)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


async def keep(
    connection: AsyncConnection, session_id: str, left: Sequence[LeftClient], now: int
) -> None:
    """Write ``left`` (each replacing an older leaving of its client id), then prune the
    session's rows (``now``: ms)."""
    if not left:
        return
    upsert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
    statement = upsert(left_clients)
    newer = statement.excluded.left_at >= left_clients.c.left_at
    statement = statement.on_conflict_do_update(
        index_elements=[left_clients.c.session_id, left_clients.c.client_id],
        set_={
            "user_id": statement.excluded.user_id,
            "left_at": statement.excluded.left_at,
            "clock": statement.excluded.clock,
        },
        where=newer,
    )
    rows = [
        {
            "session_id": session_id,
            "client_id": item.client_id,
            "user_id": item.user_id,
            "left_at": _ms(item.at),
            "clock": item.clock,
        }
        for item in left
    ]
    await connection.execute(statement, rows)
    before = now - _ms(presence.KEEP_LEFT_S)
    await connection.execute(_PRUNE, {"session_id": session_id, "before": before})
    kept = presence.MAX_LEFT_PER_MEMBER
    for user_id in sorted({item.user_id for item in left}):
        await connection.execute(
            _TRIM, {"session_id": session_id, "user_id": user_id, "kept": kept}
        )


async def read(connection: AsyncConnection, session_id: str, now: int) -> list[LeftClient]:
    """The session's client ids that left within ``KEEP_LEFT_S`` of ``now`` (ms), newest
    first, at most ``MAX_LEFT_KEPT``."""
    since = now - _ms(presence.KEEP_LEFT_S)
    rows = await connection.execute(
        select(
            left_clients.c.client_id,
            left_clients.c.user_id,
            left_clients.c.left_at,
            left_clients.c.clock,
        )
        .where(left_clients.c.session_id == session_id, left_clients.c.left_at >= since)
        .order_by(left_clients.c.left_at.desc(), left_clients.c.client_id.desc())
        .limit(presence.MAX_LEFT_KEPT)
    )
    return [LeftClient(int(r[0]), str(r[1]), int(r[2]) / 1000, int(r[3])) for r in rows]
