"""The index a session's documents are listed by (``ix_documents_heads``), on each database.
FX77: on PostgreSQL it held the title and the reader lists, and a btree entry holds at
most 2,704 bytes: a document with a reader list within the documented bounds (1,000 users
of 200 characters) could not be attached (503 ``unavailable``). There it is
``(session_id, created_at, id)`` now (long values are stored out of line, so the rows it
finds are read without their texts); SQLite's still holds all a list shows."""

from __future__ import annotations

import asyncio
import random
import string
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import insert, inspect, select, text
from sqlalchemy.exc import DBAPIError

from parley.server.http.resource_models import (
    MAX_DOCUMENT_TITLE_CHARS,
    MAX_NAME_CHARS,
    MAX_READER_ROLES,
    MAX_READER_USERS,
)
from parley.server.store.access import _DOCUMENT_HEAD
from parley.server.store.db import alembic_config, create_engine, head_revision
from parley.server.store.sessions import Store
from parley.server.store.tables import DOCUMENT_HEAD_INDEXES, documents, sessions
from tests.conftest import make_settings, postgres_database, serve_in_process

BEFORE = "members_0034"  # the revision below the one that made PostgreSQL's index fit
DECLARED_BEFORE = ["session_id", "created_at", "id", "title", "readers"]


def _names(count: int, rng: random.Random) -> list[str]:
    """``count`` names at the longest, random (so that they compress as little as a real
    list of ids)."""
    letters = string.ascii_letters + string.digits
    return ["".join(rng.choices(letters, k=MAX_NAME_CHARS)) for _ in range(count)]


async def test_a_document_at_the_bounds_of_its_title_and_readers_is_attached_and_read_back(
    database_url: str, tmp_path: Path
) -> None:
    rng = random.Random(77)
    readers = {"users": _names(MAX_READER_USERS, rng), "roles": _names(MAX_READER_ROLES, rng)}
    title = "\U0001d11e" * MAX_DOCUMENT_TITLE_CHARS  # 4 bytes each in UTF-8: 2,000 bytes
    body = {"title": title, "text": "a long list", "readers": readers}
    async with serve_in_process(make_settings(database_url, tmp_path)) as server:
        sid = await server.new_session({})
        made = await server.http.post(f"/api/v1/sessions/{sid}/documents", json=body)
        assert made.status_code == 201, made.text[:500]
        document_id = made.json()["id"]
        listed = await server.http.get(f"/api/v1/sessions/{sid}/documents")
        assert listed.status_code == 200, listed.text[:500]
        [head] = listed.json()["documents"]
        one = await server.http.get(f"/api/v1/sessions/{sid}/documents/{document_id}")
        assert one.status_code == 200, one.text[:500]
    expected = {"users": sorted(readers["users"]), "roles": sorted(readers["roles"])}
    assert (head["id"], head["title"], head["readers"], head["text"]) == (
        document_id,
        title,
        expected,
        None,
    )
    assert (one.json()["title"], one.json()["readers"], one.json()["text"]) == (
        title,
        expected,
        "a long list",
    )


async def _heads_index(database_url: str) -> list[str] | None:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            found = await connection.run_sync(
                lambda sync: {
                    str(i["name"]): [str(c) for c in i["column_names"]]
                    for i in inspect(sync).get_indexes("documents")
                }
            )
    finally:
        await engine.dispose()
    return found.get("ix_documents_heads")


async def test_the_migration_makes_the_declared_index_and_goes_down_again(
    empty_database_url: str,
) -> None:
    dialect = "postgresql" if empty_database_url.startswith("postgresql") else "sqlite"
    [declared] = [
        [c.name for c in i.columns]
        for i in DOCUMENT_HEAD_INDEXES
        if i._ddl_if is not None and i._ddl_if.dialect == dialect
    ]
    config = alembic_config(empty_database_url)
    await asyncio.to_thread(command.upgrade, config, "head")
    assert await _heads_index(empty_database_url) == declared
    await asyncio.to_thread(command.downgrade, config, BEFORE)
    assert await _heads_index(empty_database_url) == DECLARED_BEFORE
    await asyncio.to_thread(command.upgrade, config, "head")
    assert await _heads_index(empty_database_url) == declared
    fits = ["session_id", "created_at", "id"]
    assert declared == (fits if dialect == "postgresql" else DECLARED_BEFORE)


@pytest.mark.postgres
async def test_a_downgrade_refused_by_a_long_document_changes_nothing() -> None:
    """Below ``documents_0035`` no entry can hold a document at the bounds: the downgrade
    fails in its transaction, and the database stays at the head with the index it had."""
    async with postgres_database(migrated=True) as url:
        engine = create_engine(url)
        rng = random.Random(35)
        try:
            async with engine.begin() as connection:
                await connection.execute(insert(sessions).values(id="s", title="t", created_at=0))
                readers = '{"users": ["' + '", "'.join(_names(20, rng)) + '"], "roles": []}'
                row = {"id": "d", "session_id": "s", "title": "t", "text": "x", "created_at": 0}
                await connection.execute(insert(documents).values(**row, readers=readers))
            with pytest.raises(DBAPIError, match="index row size"):
                await asyncio.to_thread(command.downgrade, alembic_config(url), BEFORE)
            async with engine.connect() as connection:
                at = (
                    await connection.execute(text("SELECT version_num FROM alembic_version"))
                ).scalar()
        finally:
            await engine.dispose()
        assert at == head_revision()
        assert await _heads_index(url) == ["session_id", "created_at", "id"]


async def test_a_list_of_documents_is_read_by_the_index_in_its_order_without_texts(
    store: Store,
) -> None:
    """On PostgreSQL (SQLite's plan: ``tests/server/store/test_db.py``): the index gives
    the session's rows in the list's order, and no text is among what is read of them."""
    if store.engine.dialect.name != "postgresql":
        return
    query = (
        select(*_DOCUMENT_HEAD)
        .where(documents.c.session_id == "s1")
        .order_by(documents.c.created_at, documents.c.id)
    )
    compiled = str(
        query.compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True})
    )
    async with store.read() as connection:
        # On a table this small the planner would rather read it all.
        await connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = await connection.exec_driver_sql(f"EXPLAIN VERBOSE {compiled}")
        described = [str(row[0]) for row in plan]
    joined = "\n".join(described)
    assert "Index Scan using ix_documents_heads" in joined, joined
    assert "Sort" not in joined, joined
    outputs = [line.split("Output:", 1)[1] for line in described if "Output:" in line]
    assert outputs and all("documents.text" not in line for line in outputs), joined
