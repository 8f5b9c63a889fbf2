"""Where an event stream starts: the reply running is found through the partial index of
the events that start and end a reply, on SQLite and PostgreSQL alike (a session of many
messages and few runs is not read through on every stream that opens)."""

from __future__ import annotations

import pytest

from parley.server.http.sse_cursor import Cursor, reply_events_before, running_at
from parley.server.store.tables import session_events
from parley.session.errors import BadEventId
from tests.server.runtime.backend import sql_store

INDEX = "ix_session_events_replies"


async def test_the_reply_running_is_found_through_the_partial_index(database_url: str) -> None:
    async with sql_store(database_url) as store:
        await store.create_session("s1", "t", "queue", 0)
        rows = [{"kind": "message_posted", "data": "{}"}] * 300
        rows.insert(10, {"kind": "run_started", "data": '{"reply_id": "r1"}'})
        rows.append({"kind": "run_started", "data": '{"reply_id": "r2"}'})
        rows += [{"kind": "message_posted", "data": "{}"}] * 50
        async with store.engine.begin() as connection:
            await connection.execute(
                session_events.insert(),
                [{"session_id": "s1", "seq": n, "at_ms": 0, **r} for n, r in enumerate(rows, 1)],
            )
            assert await running_at(connection, "s1", len(rows)) == "r2"
            assert await running_at(connection, "s1", 300) == "r1"
            query = reply_events_before("s1", len(rows) + 1)
            compiled = str(
                query.compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True})
            )
            if store.engine.dialect.name == "sqlite":
                plan = await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
            else:  # on a table this small the planner would rather read it all
                await connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
                plan = await connection.exec_driver_sql(f"EXPLAIN {compiled}")
            described = " ".join(str(row[-1]) for row in plan)
        assert INDEX in described, described


def test_an_id_is_taken_only_as_the_stream_writes_it() -> None:
    """Review RB-2: ids with a leading zero in a number, never sent, were taken as the id
    without it ("3.r1.01" as "3.r1.1"); an id the stream never sent is refused."""
    assert Cursor.parse("3") == Cursor(3)
    assert Cursor.parse("0") == Cursor(0)
    assert Cursor.parse("3.r1.0") == Cursor(3, "r1", 0)
    assert Cursor.parse("30.r1.10") == Cursor(30, "r1", 10)
    for raw in ("03", "3.r1.01", "3.r1.0001", "03.r1.1", "00", "3.r1.00"):
        with pytest.raises(BadEventId):
            Cursor.parse(raw)
    for cursor in (Cursor(0), Cursor(12), Cursor(12, "r-1_x", 340), Cursor(7, "r", 0)):
        assert Cursor.parse(str(cursor)) == cursor
