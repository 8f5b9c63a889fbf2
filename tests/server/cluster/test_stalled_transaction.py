"""A node that stalls mid-transaction cannot hold its locks past its lease."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from parley.server.store.db import create_engine
from tests.conftest import ADMIN_KEY, postgres_database
from tests.server.cluster.nodes import two_in_process

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


async def test_a_write_that_waits_out_its_lock_budget_is_not_called_a_database_outage(
    tmp_path: Path,
) -> None:
    """RC-5: a member's change that waited ``PARLEY_DB_LOCK_TIMEOUT_S`` for the session's
    lease row, held by another write (on a loaded machine, or a node stalled in the middle
    of one), was answered 503 "the database is unavailable" while the database was up. It
    is still ``unavailable`` (nothing stored, sent again after ``Retry-After``), saying
    what happened; through the node that runs the session and through the other."""
    async with two_in_process(tmp_path, db_lock_timeout_s=0.5) as (url, first, second):
        sid = await first.new_session({"ann": "editor"})
        await first.connect(sid, "ann")  # the session runs on the first node
        holder = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            async with holder.transaction():
                await holder.execute(
                    "SELECT 1 FROM session_leases WHERE session_id = $1 FOR UPDATE", sid
                )
                for node in (first, second):
                    async with httpx.AsyncClient(base_url=node.base_url, timeout=30) as http:
                        answer = await http.put(
                            f"/api/v1/sessions/{sid}/members/m-{node.base_url[-5:]}",
                            json={"role": "editor"},
                            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                        )
                    assert answer.status_code == 503, answer.text
                    error = answer.json()["error"]
                    assert error["code"] == "unavailable"
                    assert "database is unavailable" not in error["message"], error
                    assert "lock" in error["message"], error
        finally:
            await holder.close()
        async with httpx.AsyncClient(base_url=first.base_url, timeout=30) as http:
            members = await http.get(
                f"/api/v1/sessions/{sid}/members",
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
        assert [m["user_id"] for m in members.json()["members"]] == ["ann"]
