"""The chooser's migration (``sessions_0025``): a session already ``shared`` is judged by
the member whose ``policy`` record last chose it (NULL: the admin key), and it goes down
and up again."""

from __future__ import annotations

import asyncio
import json

from alembic import command
from sqlalchemy import insert, update

from parley.server.store.db import alembic_config, create_engine
from parley.server.store.sessions import Store
from parley.server.store.tables import audit_log, sessions
from tests.server.store.conftest import goes_down_and_up


def _chose(session_id: str, actor: str, to: str, at: int) -> dict[str, object]:
    change = {"restricted_replies": {"from": "private", "to": to}}
    return {
        "session_id": session_id,
        "at": at,
        "kind": "policy",
        "actor": actor,
        "data": json.dumps(change),
    }


async def test_a_shared_session_is_judged_by_the_member_who_chose_it(
    empty_database_url: str,
) -> None:
    database_url = empty_database_url
    config = alembic_config(database_url)
    await asyncio.to_thread(command.upgrade, config, "presence_0024")
    store = Store(create_engine(database_url))
    try:
        for session_id in ("by-mia", "by-admin", "private"):
            await store.create_session(session_id, "t", "queue", 0)
        records = [
            _chose("by-mia", "admin", "shared", 1),
            _chose("by-mia", "olga", "private", 2),
            _chose("by-mia", "mia", "shared", 3),
            _chose("by-admin", "mia", "shared", 1),
            _chose("by-admin", "admin", "shared", 2),
            _chose("private", "mia", "shared", 1),
        ]
        async with store.transaction() as tx:
            await tx.connection.execute(insert(audit_log), records)
            shared = sessions.c.id.in_(["by-mia", "by-admin"])
            await tx.connection.execute(
                update(sessions).where(shared).values(restricted_replies="shared")
            )
        await asyncio.to_thread(command.upgrade, config, "head")
        chosen = {s: await store.get_session(s) for s in ("by-mia", "by-admin", "private")}
        assert {s: r and r.restricted_replies_by for s, r in chosen.items()} == {
            "by-mia": "mia",
            "by-admin": None,
            "private": None,
        }

        await goes_down_and_up(store, config, "presence_0024", sessions, "restricted_replies_by")
    finally:
        await store.close()
