"""Id cursors (``?after=``) that never pass over a row still being written.

On PostgreSQL ids come from a sequence when a row is inserted, not when it commits: a
transaction that took id 5 may commit after one that took id 6, and a reader that listed
6 and asked for what is after it never saw 5 (review, "nothing acknowledged is lost").
SQLite writes one transaction at a time, so its ids are in commit order.

So on PostgreSQL each row keeps its writing transaction's id (``xid``, the column's
default), and a page lists rows in (xid, id) order, only those whose transaction is below
the horizon of the transactions still in flight (``pg_snapshot_xmin``): every one of those
has ended, so all their rows are in view, and a row not in view yet has an xid at or
past the horizon, after every row listed. A page starts after the last row's ``Place``,
its (xid, id): given whole (``?cursor=``), it is exact whatever became of that row since.
Given by its id alone (``?after=``, the older form), the row's xid is read back; a row no
longer there (a delivery pruned) is passed by its id, so a few rows whose two orders
differ may be skipped or listed again. A write transaction of this database that stays
open holds back the rows committed after it began, until it ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Table, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

# The oldest transaction still in flight in this database (xid8 as a number: it has no
# cast to bigint). The snapshot's are the whole server's, so those seen in a connection to
# another database are left out: one that ended before it was seen counts, which only
# holds rows back a moment (review of the mend: another database's open transaction held
# this one's lists back). Another role's are hidden from ``pg_stat_activity``, and count.
HORIZON = text(
    "(SELECT coalesce("
    " (SELECT min(x::text::bigint) FROM pg_snapshot_xip(pg_current_snapshot()) AS x"
    "  WHERE x::text::bigint % 4294967296 NOT IN ("
    "   SELECT backend_xid::text::bigint FROM pg_stat_activity"
    "   WHERE backend_xid IS NOT NULL AND datname IS DISTINCT FROM current_database())),"
    " pg_snapshot_xmax(pg_current_snapshot())::text::bigint))"
)


@dataclass(frozen=True, slots=True)
class Place:
    """A row's place in a listing's order: its writing transaction's id (0 on SQLite, and
    on rows older than the column) and its own."""

    xid: int
    id: int


async def after(
    connection: AsyncConnection,
    table: Table,
    stream: list[ColumnElement[bool]],
    start: Place | int,
) -> tuple[list[ColumnElement[bool]], list[Any]]:
    """The conditions and the order of the rows of ``stream`` (conditions naming it) after
    ``start``: a row's place, or a row's id (0: from the first), whose place is read back
    (a row no longer there is passed by its id)."""
    after_id = start.id if isinstance(start, Place) else start
    if connection.dialect.name != "postgresql":
        return [*stream, table.c.id > after_id], [table.c.id]
    where = [*stream, table.c.xid < HORIZON]
    if isinstance(start, Place):
        where.append(tuple_(table.c.xid, table.c.id) > tuple_(start.xid, start.id))
    elif after_id > 0:
        found = (
            await connection.execute(select(table.c.xid).where(table.c.id == after_id, *stream))
        ).first()
        if found is None:
            where.append(table.c.id > after_id)
        else:
            where.append(tuple_(table.c.xid, table.c.id) > tuple_(found.xid, after_id))
    return where, [table.c.xid, table.c.id]
