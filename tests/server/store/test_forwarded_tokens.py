"""``session_commands.token_claims`` (``commands_0030``), on each database: the claims of
the client token a forwarded command was sent with, stored by the forwarding node and read
back whole by the node that runs the session; the migration goes down and up again."""

from __future__ import annotations

import asyncio

import pytest
from alembic import command
from sqlalchemy import insert, select

from parley.authz.tokens import ClientClaims
from parley.server.cluster.forwarding import CommandTable, claims_column, claims_of
from parley.server.cluster.tables import session_commands
from parley.server.store.db import alembic_config, create_engine
from parley.server.store.sessions import Store
from tests.conftest import postgres_database
from tests.server.store.conftest import goes_down_and_up

LINKS = ClientClaims("carol", "s1", 1_700_000_600, "jti-1", "c1", "ann", "a1")


def test_the_claims_of_a_token_go_through_the_column_whole() -> None:
    assert claims_column(None) is None and claims_of(None) is None
    for claims in (LINKS, ClientClaims("bob", "s1", 1_700_000_600, "jti-2")):
        assert claims_of(claims_column(claims)) == claims


async def test_the_migration_adds_the_claims_and_goes_down_again(
    empty_database_url: str,
) -> None:
    config = alembic_config(empty_database_url)
    await asyncio.to_thread(command.upgrade, config, "head")
    store = Store(create_engine(empty_database_url))
    try:
        await store.create_session("s1", "t", "queue", 0)
        async with store.engine.begin() as connection:
            for user_id, claims in (("carol", LINKS), ("!admin", None)):
                await connection.execute(
                    insert(session_commands).values(
                        session_id="s1",
                        user_id=user_id,
                        frame="{}",
                        token_claims=claims_column(claims),
                        origin="n1",
                        created_at=0,
                    )
                )
        async with store.engine.connect() as connection:
            rows = await connection.execute(
                select(session_commands.c.token_claims).order_by(session_commands.c.id)
            )
            assert [claims_of(r[0]) for r in rows] == [LINKS, None]
        await goes_down_and_up(store, config, "leases_0029", session_commands, "token_claims")
    finally:
        await store.close()


@pytest.mark.postgres
async def test_a_forwarded_command_is_read_back_with_its_tokens_claims() -> None:
    """What the running node reads of an open forwarded command (``take``)."""
    async with postgres_database(migrated=True) as url:
        store = Store(create_engine(url))
        try:
            await store.create_session("s1", "t", "queue", 0)
            table = CommandTable(store.engine, "n1")
            await table.submit("s1", "carol", '{"type":"message"}', LINKS)
            await table.submit("s1", "!admin", "{}")
            opened = await table.take("s1", 10, 30.0)
            assert [(c.user_id, c.token) for c in opened] == [("carol", LINKS), ("!admin", None)]
        finally:
            await store.close()
