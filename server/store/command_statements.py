"""The statements every command writes, built once.

A SQLAlchemy statement built per call (``update(t).where(...).values(...)``) costs its
construction and then its cache key, walked over the whole expression, before the cached
compiled form is found: 166 us for the session counter's update against 41 us for the
same statement built once and given its values as parameters (SQLite, in process), and
every command writes four or more. These are those statements, with their values bound
at execution; the SQL is the same.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import LargeBinary, bindparam, insert, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from parley.server.store.tables import entries, session_events, sessions
from parley.server.store.webhooks import version_now
from parley.session.lifecycle import PromptStatus, prompt_predecessors

# The session's counters, moved in one statement: ``:session`` names the row, ``:events``
# how many event numbers to take. Returns (last_seq, last_event_seq, subscriptions' version).
_COUNTED = (sessions.c.last_seq, sessions.c.last_event_seq, version_now())
_SESSION = sessions.c.id == bindparam("session")
COUNT_ENTRY_AND_EVENTS = (
    update(sessions)
    .where(_SESSION)
    .values(
        last_seq=sessions.c.last_seq + 1,
        last_event_seq=sessions.c.last_event_seq + bindparam("events"),
    )
    .returning(*_COUNTED)
)
COUNT_ENTRY = (
    update(sessions).where(_SESSION).values(last_seq=sessions.c.last_seq + 1).returning(*_COUNTED)
)
COUNT_EVENTS = (
    update(sessions)
    .where(_SESSION)
    .values(last_event_seq=sessions.c.last_event_seq + bindparam("events"))
    .returning(*_COUNTED)
)

# Rows given as parameters (one dict each).
INSERT_EVENTS = insert(session_events)

# PostgreSQL: a write's document update, the session's counters and its events in one
# statement, one round trip (``StoreTx.append_change``). ``:entries`` (0 or 1) and
# ``:events`` count the numbers taken; the events come as arrays, numbered in their order
# from the counter's new value. Returns what ``COUNT_ENTRY_AND_EVENTS`` does, then the
# update's id. The counter's row stays locked to the commit, as in the statements above.
# The subscriptions' version is ``version_now()``'s own SQL, not a copy of it.
_VERSION_SQL = version_now().compile(
    dialect=postgresql.dialect(),  # type: ignore[no-untyped-call]
    compile_kwargs={"literal_binds": True},
)
# The notifications queued on a transaction (``StoreTx.notify``), sent by one statement:
# delivered when the transaction commits. (A CTE of ``COUNT_AND_STORE`` too, whose result
# selects ``sent``: PostgreSQL runs a SELECT in a WITH only when it is read.)
_NOTIFY_SQL = """
    SELECT count(pg_notify(n.channel, n.payload)) AS sent
    FROM unnest(CAST(:channels AS TEXT[]), CAST(:payloads AS TEXT[])) AS n(channel, payload)
"""


COUNT_AND_STORE = text(
    f"""
    WITH counted AS (
        UPDATE sessions SET last_seq = last_seq + CAST(:entries AS BIGINT),
            last_event_seq = last_event_seq + CAST(:events AS BIGINT)
        WHERE id = :session
        RETURNING last_seq, last_event_seq
    ), doc AS (
        INSERT INTO doc_updates (session_id, data) VALUES (:session, :update) RETURNING id
    ), stored AS (
        INSERT INTO session_events (session_id, seq, at_ms, kind, actor, data)
        SELECT :session, counted.last_event_seq - CAST(:events AS BIGINT) + e.n,
            CAST(:at_ms AS BIGINT), e.kind, e.actor, e.data
        FROM counted, unnest(CAST(:kinds AS VARCHAR[]), CAST(:actors AS VARCHAR[]),
            CAST(:data AS TEXT[])) WITH ORDINALITY AS e(kind, actor, data, n)
    ), notified AS (
        {_NOTIFY_SQL}
    )
    SELECT counted.last_seq, counted.last_event_seq, {_VERSION_SQL}, (SELECT id FROM doc),
        (SELECT sent FROM notified)
    FROM counted
    """
).bindparams(bindparam("update", type_=LargeBinary))


# PostgreSQL: every notification of a transaction in one statement (``StoreTx.notify``).
NOTIFY_ALL = text(_NOTIFY_SQL)


@cache
def insert_entry(dialect: str) -> Any:
    """The entry's insert for ``dialect`` (its columns as parameters): nothing inserted,
    and no row returned, when its author sent the command id before."""
    upsert = pg_insert if dialect == "postgresql" else sqlite_insert
    return (
        upsert(entries)
        .on_conflict_do_nothing(index_elements=["session_id", "author", "command_id"])
        .returning(entries.c.id)
    )


@cache
def set_entry_status(status: PromptStatus) -> Any:
    """Move the row ``:entry`` to ``status`` from a status the lifecycle table allows
    before it; the columns to set are the parameters (``status`` and what comes with it)."""
    allowed = [old.value for old in prompt_predecessors(status)]
    return update(entries).where(entries.c.id == bindparam("entry"), entries.c.status.in_(allowed))
