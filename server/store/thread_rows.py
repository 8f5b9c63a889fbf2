"""Side-threads in the database: the rows of ``side_threads`` and ``side_thread_turns``,
written in the room's transaction (``StoreTx``) and read when a session loads."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.authz.policy import restriction_from_json, restriction_to_json
from parley.server.store.tables import side_thread_turns, side_threads
from parley.session.core import SideThread, ThreadTurn
from parley.session.core.effects import ThreadTurnStatus


async def insert_thread(connection: AsyncConnection, session_id: str, thread: SideThread) -> None:
    await connection.execute(
        insert(side_threads).values(
            id=thread.id,
            session_id=session_id,
            owner=thread.owner,
            anchor_seq=thread.anchor_seq,
            title=thread.title,
            status=thread.status,
            command_id=thread.command_id,
            created_at=thread.created_at,
        )
    )


async def set_thread_status(
    connection: AsyncConnection, session_id: str, thread_id: str, status: str
) -> None:
    await connection.execute(
        update(side_threads)
        .where(and_(side_threads.c.id == thread_id, side_threads.c.session_id == session_id))
        .values(status=status)
    )


async def delete_thread(connection: AsyncConnection, session_id: str, thread_id: str) -> None:
    # The turns first: SQLite enforces the cascade only with its foreign keys switched on.
    await connection.execute(
        delete(side_thread_turns).where(side_thread_turns.c.thread_id == thread_id)
    )
    await connection.execute(
        delete(side_threads).where(
            and_(side_threads.c.id == thread_id, side_threads.c.session_id == session_id)
        )
    )


async def insert_turn(connection: AsyncConnection, session_id: str, turn: ThreadTurn) -> None:
    await connection.execute(
        insert(side_thread_turns).values(
            id=turn.id,
            thread_id=turn.thread_id,
            session_id=session_id,
            ordinal=turn.index,
            kind=turn.kind,
            author=turn.author,
            text=turn.text,
            status=turn.status,
            reason_code=turn.reason_code,
            retry_at=turn.retry_at,
            restriction=json.dumps(restriction_to_json(turn.restriction)),
            summarise=turn.summarise,
            command_id=turn.command_id,
            created_at=turn.created_at,
        )
    )


async def set_turn_status(connection: AsyncConnection, settle: ThreadTurnStatus) -> None:
    await connection.execute(
        update(side_thread_turns)
        .where(side_thread_turns.c.id == settle.turn_id)
        .values(status=settle.status, reason_code=settle.reason_code, retry_at=settle.retry_at)
    )


async def load_threads(
    connection: AsyncConnection,
    session_id: str,
    owner: str | None = None,
    *,
    thread_id: str | None = None,
    texts: bool = True,
) -> list[SideThread]:
    """The session's side-threads (``owner``'s alone, if named; the one ``thread_id``
    alone, if named), oldest first, each with its turns in order; without ``texts`` the
    turns' texts are left out (a list of side-threads needs their count and statuses, not
    megabytes of text)."""
    chosen = side_threads.c.session_id == session_id
    if owner is not None:
        chosen = and_(chosen, side_threads.c.owner == owner)
    if thread_id is not None:
        chosen = and_(chosen, side_threads.c.id == thread_id)
    threads = await connection.execute(
        select(side_threads).where(chosen).order_by(side_threads.c.created_at, side_threads.c.id)
    )
    turns: dict[str, list[ThreadTurn]] = {}
    of_turns = side_thread_turns.c.session_id == session_id
    if owner is not None or thread_id is not None:
        of_turns = and_(
            of_turns, side_thread_turns.c.thread_id.in_(select(side_threads.c.id).where(chosen))
        )
    columns: list[ColumnElement[Any]] = [
        c for c in side_thread_turns.c if texts or c.name != "text"
    ]
    if not texts:
        columns.append(literal("").label("text"))
    rows = await connection.execute(
        select(*columns).where(of_turns).order_by(side_thread_turns.c.ordinal)
    )
    for row in rows:
        turns.setdefault(row.thread_id, []).append(
            ThreadTurn(
                id=row.id,
                thread_id=row.thread_id,
                index=row.ordinal,
                kind=row.kind,
                author=row.author,
                text=row.text,
                status=row.status,
                created_at=row.created_at,
                restriction=restriction_from_json(json.loads(row.restriction)),
                reason_code=row.reason_code,
                summarise=bool(row.summarise),
                command_id=row.command_id,
                retry_at=row.retry_at,
            )
        )
    return [
        SideThread(
            id=row.id,
            owner=row.owner,
            anchor_seq=row.anchor_seq,
            title=row.title,
            status=row.status,
            created_at=row.created_at,
            turns=tuple(turns.get(row.id, ())),
            command_id=row.command_id,
        )
        for row in threads
    ]
