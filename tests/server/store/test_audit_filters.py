"""The indexes of an audit page's filters (``audit_0028``), on each database: the migration
creates them as the schema declares and goes down and up again, and a page filtered by
kind or by actor reads through its index in the page's order, not through the session's
whole log (review FX21: 0.2 s a page at 1,000,000 records). On SQLite an unfiltered page
did too: its index held the xid (always 0 there) before the id, and every record of the
session after the cursor was sorted."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect

from parley.server.store.access import audit_query
from parley.server.store.db import alembic_config, create_engine
from parley.server.store.horizon import Place
from parley.server.store.sessions import Store
from parley.server.store.tables import AUDIT_PAGE_INDEXES

FILTERS = {"ix_audit_log_kind": "kind", "ix_audit_log_actor": "actor"}
UNFILTERED = {"sqlite": "ix_audit_log_session_id", "postgresql": "ix_audit_log_session_xid"}


async def _indexes(database_url: str) -> dict[str, list[str]]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: {
                    str(i["name"]): [str(c) for c in i["column_names"]]
                    for i in inspect(sync).get_indexes("audit_log")
                }
            )
    finally:
        await engine.dispose()


async def test_the_migration_creates_the_declared_indexes_and_goes_down_again(
    empty_database_url: str,
) -> None:
    config = alembic_config(empty_database_url)
    await asyncio.to_thread(command.upgrade, config, "head")
    await asyncio.to_thread(command.downgrade, config, "members_0027")
    below = await _indexes(empty_database_url)
    assert not set(FILTERS) & set(below)
    assert below["ix_audit_log_session_xid"] == ["session_id", "xid", "id"]
    await asyncio.to_thread(command.upgrade, config, "head")
    found = await _indexes(empty_database_url)
    dialect = "postgresql" if empty_database_url.startswith("postgresql") else "sqlite"
    declared = {
        str(i.name): [c.name for c in i.columns]
        for i in AUDIT_PAGE_INDEXES
        if i._ddl_if is not None and i._ddl_if.dialect == dialect
    }
    assert {name: found.get(name) for name in declared} == declared
    assert set(declared) == {*FILTERS, UNFILTERED[dialect]}
    assert set(found) == set(declared)  # SQLite's (session_id, xid, id) gone
    order = ["xid", "id"] if dialect == "postgresql" else ["id"]
    for name, column in FILTERS.items():
        assert declared[name] == ["session_id", column, *order]


@pytest.mark.parametrize(
    ("index", "filters", "after"),
    [
        ("ix_audit_log_kind", {"kinds": ["refused"]}, 0),
        ("ix_audit_log_kind", {"kinds": ["refused"]}, Place(0, 70)),
        ("ix_audit_log_actor", {"actor": "ann"}, 40),
        ("", {}, 30),
    ],
)
async def test_a_page_reads_through_the_index_of_its_filter_in_its_order(
    store: Store, index: str, filters: dict[str, Any], after: Place | int
) -> None:
    for n in range(100):
        await store.access.audit("s1", n, "refused" if n % 10 else "policy", f"u{n % 7}", {})
    async with store.read() as connection:
        query = (await audit_query(connection, "s1", after, **filters)).limit(11)
        compiled = str(
            query.compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True})
        )
        if store.engine.dialect.name == "sqlite":
            plan = await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
        else:  # on a table this small the planner would rather read it all
            await connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = await connection.exec_driver_sql(f"EXPLAIN {compiled}")
        described = " ".join(str(row[-1]) for row in plan)
    index = index or UNFILTERED[store.engine.dialect.name]
    assert f"USING INDEX {index}" in described or f"Index Scan using {index}" in described, (
        described
    )
    assert "TEMP B-TREE" not in described and "Sort" not in described, described
