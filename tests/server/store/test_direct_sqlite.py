"""The statements every run writes, run beneath SQLAlchemy on SQLite (``direct_sqlite``):
the same rows stored and returned, the same errors, in the same transaction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from parley.server.store import command_statements
from parley.server.store.direct_sqlite import DirectResult
from parley.server.store.rows import EntryRow
from parley.server.store.sessions import Store
from parley.server.store.tables import doc_updates, entries, session_events, sessions
from parley.session.errors import Unavailable
from parley.session.events import PromptAccepted
from parley.session.lifecycle import IllegalTransition, PromptStatus
from tests.conftest import sqlite_url
from tests.server.runtime.backend import sql_store
from tests.server.test_webhook_store import statements


def _event(seq: int) -> dict[str, Any]:
    return {"session_id": "s", "seq": seq, "at_ms": 5, "kind": "k", "actor": "a", "data": "{}"}


async def _store_with_session(store: Store) -> None:
    await store.create_session("s", "t", "queue", 0)


async def test_marked_statements_run_beneath_sqlalchemy_and_store_the_same_rows(
    tmp_path: Path,
) -> None:
    async with sql_store(sqlite_url(tmp_path)) as store:
        await _store_with_session(store)
        async with store.transaction() as tx:
            counted = await tx.connection.execute(
                command_statements.COUNT_EVENTS, {"session": "s", "events": 2}
            )
            assert isinstance(counted, DirectResult)
            last_seq, last_event_seq, _version = counted.first()
            await tx.connection.execute(command_statements.INSERT_EVENTS, [_event(1), _event(2)])
            ids = await tx.append_updates([("s", b"\x01"), ("s", b"\x02\x03")])
        assert (last_seq, last_event_seq) == (0, 2)
        assert ids == sorted(ids) and len(set(ids)) == 2
        async with store.read() as connection:
            stored = (await connection.execute(select(session_events.c.seq))).scalars().all()
            data = await connection.execute(
                select(doc_updates.c.id, doc_updates.c.data).where(doc_updates.c.id.in_(ids))
            )
            counters = (await connection.execute(select(sessions.c.last_event_seq))).scalar()
        assert sorted(stored) == [1, 2]
        assert sorted((i, bytes(d)) for i, d in data) == [(ids[0], b"\x01"), (ids[1], b"\x02\x03")]
        assert counters == 2


async def test_an_in_list_of_the_statement_is_kept(tmp_path: Path) -> None:
    """``set_entry_status`` moves a row only from the statuses its IN list names."""
    async with sql_store(sqlite_url(tmp_path)) as store:
        await _store_with_session(store)
        async with store.transaction() as tx:
            tx.claim_seq("s", 1)
            await tx.insert_entry(_prompt_row(), last=True)
            await tx.append_events("s", 1, [PromptAccepted("p1", 1, "a")])
        async with store.transaction() as tx:
            await tx.set_entry_status("p1", PromptStatus.RUNNING, started_at=7)
        with pytest.raises(IllegalTransition):
            async with store.transaction() as tx:
                await tx.set_entry_status("p1", PromptStatus.QUEUED)
        async with store.read() as connection:
            row = (
                await connection.execute(
                    select(entries.c.status, entries.c.started_at).where(entries.c.id == "p1")
                )
            ).one()
        assert tuple(row) == ("running", 7)


async def test_a_broken_constraint_is_sqlalchemys_error_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    async with sql_store(sqlite_url(tmp_path)) as store:
        await _store_with_session(store)
        with pytest.raises(IntegrityError):
            async with store.transaction() as tx:
                await tx.connection.execute(command_statements.INSERT_EVENTS, _event(1))
                await tx.connection.execute(command_statements.INSERT_EVENTS, _event(1))
        async with store.read() as connection:
            assert (await connection.execute(select(session_events.c.seq))).all() == []
        # The next write goes on as if nothing had happened.
        async with store.transaction() as tx:
            await tx.connection.execute(command_statements.INSERT_EVENTS, _event(1))


async def test_a_statement_to_a_missing_table_is_refused_as_unavailable(tmp_path: Path) -> None:
    """An error of SQLite's own (not the data's) is the store's ``Unavailable``, as it is
    through SQLAlchemy."""
    async with sql_store(sqlite_url(tmp_path)) as store:
        await _store_with_session(store)
        async with store.read() as connection:
            await connection.exec_driver_sql("DROP TABLE audit_log")
            await connection.commit()
        with pytest.raises(Unavailable):
            async with store.transaction() as tx:
                await tx.insert_audit("s", 1, "k", "a", {})


async def test_while_something_listens_to_the_engine_every_statement_goes_through_it(
    tmp_path: Path,
) -> None:
    async with sql_store(sqlite_url(tmp_path)) as store:
        await _store_with_session(store)
        with statements(store) as seen:
            async with store.transaction() as tx:
                result = await tx.connection.execute(command_statements.INSERT_EVENTS, _event(1))
        assert not isinstance(result, DirectResult)
        assert any("INSERT INTO session_events" in s for s in seen)


def _prompt_row() -> EntryRow:
    return EntryRow(
        id="p1",
        session_id="s",
        seq=1,
        kind="prompt",
        author="a",
        command_id="c1",
        text="hi",
        status="queued",
        reason=None,
        reply_id=None,
        created_at=1,
        started_at=None,
    )


async def test_statements_either_way_are_one_transaction(tmp_path: Path) -> None:
    """A statement through SQLAlchemy and one beneath it, in one write: both stored, or,
    when the write fails after them, neither."""
    async with sql_store(sqlite_url(tmp_path)) as store:
        await _store_with_session(store)
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.set_policy("s", "free")  # through SQLAlchemy
                await tx.connection.execute(command_statements.INSERT_EVENTS, _event(1))
                raise RuntimeError("after both")
        assert await _policy_and_events(store) == ("queue", [])
        async with store.transaction() as tx:
            await tx.connection.execute(command_statements.INSERT_EVENTS, _event(1))
            await tx.set_policy("s", "free")
        assert await _policy_and_events(store) == ("free", [1])


async def _policy_and_events(store: Store) -> tuple[str, list[int]]:
    async with store.read() as connection:
        policy = (await connection.execute(select(sessions.c.policy))).scalar_one()
        seqs = (await connection.execute(select(session_events.c.seq))).scalars().all()
    return policy, sorted(seqs)
