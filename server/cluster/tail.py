"""Reading a session's update log from where a read replica left off.

The running node may squash the log into a snapshot at any time (deleting the updates it
covers). The snapshot and the tail are read in one REPEATABLE READ transaction, so the two
come from the same moment: a replica that fell behind a squash gets the snapshot (CRDT
updates are idempotent, so applying state it already has changes nothing) and then every
update after it, and never skips one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import and_, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.cluster.lease import database_errors
from parley.server.store import thread_log
from parley.server.store.rows import StoredDoc
from parley.server.store.tables import doc_snapshots, doc_updates
from parley.session.closes import CloseCode

if TYPE_CHECKING:
    from parley.server.runtime.room import SessionRoom


@dataclass(frozen=True, slots=True)
class Tail:
    snapshot: bytes | None  # set when the log was squashed past ``after``
    updates: list[bytes]
    last_id: int  # the update id the replica has applied once it applied this
    complete: bool  # False: more updates follow, read again from ``last_id``
    # A digest of who may read the session as of the same moment as the updates: its
    # members (roles, grants, denials, epochs, names), its model and restricted-reply
    # policy (and who chose it), its revoked tokens. When it differs from the one the
    # replica last put in force, the replica reloads them before it sends these updates
    # to a socket: the notice of a removal may come after the updates posted since
    # (review: a removed member's socket on a following node could be sent one).
    settings: str


# One statement, in the tail's snapshot: PostgreSQL digests the rows, so a read costs one
# value over the wire however many members the session has.
SETTINGS_DIGEST = text(
    """
    SELECT md5(concat_ws(E'\\x1e',
      (SELECT concat_ws(E'\\x1f', model, restricted_replies, restricted_replies_by)
         FROM sessions WHERE id = :sid),
      (SELECT string_agg(concat_ws(E'\\x1f', user_id, role, grants, denials, token_epoch,
                                   display_name), E'\\x1e' ORDER BY user_id)
         FROM members WHERE session_id = :sid),
      (SELECT string_agg(id, E'\\x1f' ORDER BY id) FROM client_tokens
         WHERE session_id = :sid AND revoked_at IS NOT NULL)))
    """
)


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
            digest = (await connection.execute(SETTINGS_DIGEST, {"sid": session_id})).scalar()
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
        settings=str(digest),
    )


async def read_thread_tail(engine: AsyncEngine, thread_id: str, after: int) -> StoredDoc | None:
    """A side-thread's log after ``after`` (``thread_log.load``: a squash never hides an
    update); None once the thread is deleted. A thread's log is short (squashed every
    ``snapshot_every_updates``): no pages."""
    async with database_errors(), engine.connect() as connection, connection.begin():
        if not await thread_log.thread_exists(connection, thread_id):
            return None
        return await thread_log.load(connection, thread_id, after)


async def catch_up_threads(engine: AsyncEngine, room: SessionRoom) -> None:
    """A read replica: bring the side-thread documents its sockets hold up to their logs
    (a thread deleted meanwhile closes its sockets, as on the running node)."""
    docs = room.side_threads.docs
    for thread_id, live in list(docs.live.items()):
        stored = await read_thread_tail(engine, thread_id, live.last_update_id)
        if docs.live.get(thread_id) is not live:
            continue  # released, or read again, meanwhile
        if stored is None:
            del docs.live[thread_id]
            room.sockets.close_thread(thread_id, CloseCode.NOT_FOUND, "side-thread deleted")
        elif stored.snapshot is not None or stored.updates:
            live.apply_replicated(stored)
