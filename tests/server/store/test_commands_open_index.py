"""``ix_session_commands_open`` (``commands_0036``): the commands a take reads, open or
taken, by a partial index that holds no answer. It held ``result``, and a forwarded REST
write's answer (all the session's facts) past 2,704 bytes, PostgreSQL's limit of a btree
entry, could not be stored: the command stayed taken, never answered (FX77)."""

from __future__ import annotations

import asyncio
import json
import random
import string

import pytest
from alembic import command
from sqlalchemy import text

from parley.server.cluster.forwarding import CommandTable
from parley.server.store.db import alembic_config, create_engine
from parley.server.store.sessions import Store
from tests.conftest import postgres_database


@pytest.mark.postgres
async def test_a_long_answer_is_stored_and_the_next_command_is_taken() -> None:
    letters = random.Random(7).choices(string.ascii_letters, k=10_000)  # not compressible
    facts = {f"fact{n}": "".join(letters[n * 2000 : (n + 1) * 2000]) for n in range(5)}
    answer = json.dumps({"type": "ok", "result": {"facts": facts}})
    async with postgres_database(migrated=True) as url:
        store = Store(create_engine(url))
        try:
            await store.create_session("s1", "t", "queue", 0)
            table = CommandTable(store.engine, "n1")
            first = await table.submit("s1", "!admin", '{"op":"set_fact"}')
            [taken] = await table.take("s1", 10, 30.0)
            assert taken.id == first
            await table.answer([(first, answer)])
            assert await table.result(first) == answer
            second = await table.submit("s1", "!admin", '{"op":"pin"}')
            assert [c.id for c in await table.take("s1", 10, 30.0)] == [second]
            async with store.engine.connect() as connection:
                plan = "\n".join(
                    row[0]
                    for row in await connection.execute(
                        text(
                            "EXPLAIN SELECT id FROM session_commands WHERE session_id = 's1'"
                            " AND (result IS NULL OR result = '') ORDER BY id LIMIT 10"
                        )
                    )
                )
                definition = (
                    await connection.execute(
                        text(
                            "SELECT indexdef FROM pg_indexes"
                            " WHERE indexname = 'ix_session_commands_open'"
                        )
                    )
                ).scalar_one()
            assert "(session_id, id) WHERE ((result IS NULL) OR (result = ''::text))" in definition
            assert "ix_session_commands_open" in plan, plan
        finally:
            await store.close()


async def test_the_migration_goes_down_and_up_again(empty_database_url: str) -> None:
    config = alembic_config(empty_database_url)
    await asyncio.to_thread(command.upgrade, config, "head")
    await asyncio.to_thread(command.downgrade, config, "documents_0035")
    await asyncio.to_thread(command.upgrade, config, "head")
    store = Store(create_engine(empty_database_url))
    try:
        await store.create_session("s1", "t", "queue", 0)
        table = CommandTable(store.engine, "n1")
        if "postgresql" in empty_database_url:
            command_id = await table.submit("s1", "!admin", "{}")
            assert [c.id for c in await table.take("s1", 10, 30.0)] == [command_id]
    finally:
        await store.close()
