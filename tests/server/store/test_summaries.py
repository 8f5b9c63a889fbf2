"""The summaries' migration (``summaries_0023``): rows stored before it are read as they
were (each extending the row before it), and it goes down and up again."""

from __future__ import annotations

import asyncio
import json

from alembic import command
from sqlalchemy import insert

from parley.server.store.db import alembic_config, create_engine
from parley.server.store.sessions import Store
from parley.server.store.tables import summaries
from tests.server.store.conftest import goes_down_and_up


async def test_rows_stored_before_the_migration_extend_the_row_before_them(
    empty_database_url: str,
) -> None:
    database_url = empty_database_url
    config = alembic_config(database_url)
    await asyncio.to_thread(command.upgrade, config, "audit_0022")
    store = Store(create_engine(database_url))
    try:
        for session_id in ("a", "b"):
            await store.create_session(session_id, "t", "queue", 0)
        rows = [("a", 1, ["e1"]), ("a", 2, ["e2", "e3"]), ("b", 1, ["f1"]), ("a", 3, ["e4"])]
        async with store.transaction() as tx:
            for session_id, ordinal, added in rows:  # as the schema before had them
                await tx.connection.execute(
                    insert(summaries).values(
                        id=f"{session_id}{ordinal}",
                        session_id=session_id,
                        ordinal=ordinal,
                        from_seq=1,
                        to_seq=ordinal,
                        covers=json.dumps(added),
                        text=f"summary {ordinal}",
                        model="m",
                        input_tokens=1,
                        output_tokens=1,
                        created_at=0,
                    )
                )
        await asyncio.to_thread(command.upgrade, config, "head")
        found = await store.load_summaries("a")
        assert [(s.id, s.extends, sorted(s.covers)) for s in found] == [
            ("a1", None, ["e1"]),
            ("a2", "a1", ["e1", "e2", "e3"]),
            ("a3", "a2", ["e1", "e2", "e3", "e4"]),
        ]
        assert [(s.id, s.extends) for s in await store.load_summaries("b")] == [("b1", None)]

        await goes_down_and_up(store, config, "audit_0022", summaries, "extends")
    finally:
        await store.close()
