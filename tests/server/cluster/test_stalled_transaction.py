"""A node that stalls mid-transaction cannot hold its locks past its lease."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from parley.server.store.db import create_engine
from tests.conftest import postgres_database

pytestmark = pytest.mark.postgres


async def test_postgres_ends_a_transaction_left_idle_past_the_limit() -> None:
    async with postgres_database() as url:
        engine = create_engine(url, idle_in_transaction_s=0.3)
        try:
            async with engine.connect() as connection:
                # autobegin: the SHOW opens the transaction
                shown = await connection.scalar(text("SHOW idle_in_transaction_session_timeout"))
                assert shown == "300ms"
                await asyncio.sleep(1.0)  # the node stalls with the transaction open
                with pytest.raises(DBAPIError):
                    await connection.execute(text("SELECT 1"))
        finally:
            await engine.dispose()
