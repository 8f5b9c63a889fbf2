"""SQLite on a file, its reads off the loop (``sqlite_inline.ThreadReads``): a session's
stored document (a snapshot of up to 16 MiB) was read and copied in the loop's thread,
holding every socket of the node while a cold session loaded. Counted by the thread each
statement ran in, never timed."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from parley.server.store.sqlite_inline import ThreadReads, file_path
from parley.server.store.tables import doc_updates
from tests.conftest import sqlite_url
from tests.server.runtime.backend import sql_store

SNAPSHOT = bytes(range(256)) * 4096  # 1 MiB: no document, only its bytes as stored


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, str]]]:
    """Every statement SQLite runs from here on, with the thread that ran it."""
    statements: list[tuple[int, str]] = []
    connect = sqlite3.connect

    def tracing(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = connect(*args, **kwargs)
        connection.set_trace_callback(lambda sql: statements.append((threading.get_ident(), sql)))
        return connection

    monkeypatch.setattr(sqlite3, "connect", tracing)
    yield statements


async def test_a_sessions_stored_document_is_read_off_the_loops_thread(
    tmp_path: Path, traced: list[tuple[int, str]]
) -> None:
    async with sql_store(sqlite_url(tmp_path)) as store:
        await store.create_session("s", "t", "queue", 0)
        async with store.transaction() as tx:
            await tx.write_snapshot("s", SNAPSHOT, 0, 0)
            await tx.append_updates([("s", b"\x01"), ("s", b"\x02\x03")])
        loop = threading.get_ident()
        traced.clear()
        stored = await store.load_doc("s")
    # The same document as stored (the snapshot whole, the updates in order)...
    assert stored.snapshot == SNAPSHOT
    assert stored.updates == [b"\x01", b"\x02\x03"]
    assert stored.updates_since_snapshot == 2
    # ...read in a worker thread, in one read transaction: the loop ran none of it.
    reads = [(thread, sql) for thread, sql in traced if "doc_snapshots" in sql]
    assert reads and all(thread != loop for thread, _ in reads)
    read_by = {thread for thread, sql in traced if "doc_" in sql or sql == "BEGIN"}
    assert len(read_by) == 1 and loop not in read_by


async def test_the_statements_of_a_read_see_one_state_while_the_loop_writes(
    tmp_path: Path,
) -> None:
    """A write the loop commits between a read's two statements is seen by neither (a
    snapshot squashed meanwhile would otherwise pair the old snapshot with the updates
    after the new one); the writer does not wait for the read."""
    url = sqlite_url(tmp_path)
    async with sql_store(url) as store:
        await store.create_session("s", "t", "queue", 0)
        path = file_path(store.engine.url)
        assert path is not None
        reads = ThreadReads(path)
        first_done, go_on = threading.Event(), threading.Event()
        count = "SELECT count(*) FROM doc_updates"

        def reading(connection: sqlite3.Connection) -> tuple[int, int]:
            first = connection.execute(count).fetchone()[0]
            first_done.set()
            assert go_on.wait(30)
            return first, connection.execute(count).fetchone()[0]

        read = asyncio.ensure_future(reads.read(reading))
        try:
            assert await asyncio.to_thread(first_done.wait, 30)
            async with store.transaction() as tx:
                await tx.append_updates([("s", b"\x01")])
        finally:
            go_on.set()
        assert await read == (0, 0)
        async with store.read() as connection:
            assert len((await connection.execute(select(doc_updates.c.id))).all()) == 1
        reads.close()
