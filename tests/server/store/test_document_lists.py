"""A session's documents as the store lists them: their reader lists are parsed a few at a
time, the event loop given back between them (FX67: 100 documents' lists, 22 MB, were
parsed in one block, about 0.3 s of the loop). On SQLite alone: the parsing is the same on
each database, and a PostgreSQL database of one test costs seconds."""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

from parley.authz.policy import Readers
from parley.server.store import access as store_access
from parley.server.store.access import AccessStore
from parley.server.store.access_rows import DocumentRow, DocumentSizes
from parley.server.store.sessions import Store
from tests.conftest import sqlite_url
from tests.server.runtime.backend import sql_store


async def _attach(store: Store, count: int) -> list[str]:
    access = AccessStore(store)
    ids = [f"d{i}" for i in range(count)]
    for i, document_id in enumerate(ids):
        readers = Readers(document_id, frozenset({"vic", f"reader-{i}"}), frozenset({"owner"}))
        await access.add_document(DocumentRow(document_id, "s1", f"doc {i}", "x", readers, i), 100)
    return ids


async def test_a_lists_reader_lists_are_parsed_giving_the_loop_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another task (another client's request) runs between each two documents parsed
    (one a step here): no duration is measured, only the order of what ran."""
    ran: list[str] = []
    readers_of = store_access._readers

    def parsed(row: Any) -> Readers:
        ran.append(f"parsed {row.id}")
        return readers_of(row)

    done = asyncio.Event()

    async def other_client() -> None:
        while not done.is_set():
            ran.append("served")
            await asyncio.sleep(0)

    async with sql_store(sqlite_url(tmp_path)) as store:
        await store.create_session("s1", "t", "queue", 0)
        ids = await _attach(store, 6)
        monkeypatch.setattr(store_access, "PARSED_BYTES_PER_TURN", 1)
        monkeypatch.setattr(store_access, "_readers", parsed)
        ticker = asyncio.create_task(other_client())
        await asyncio.sleep(0)  # the other client is being served
        for texts in (False, True):
            ran.clear()
            rows = await AccessStore(store).list_documents("s1", texts=texts)
            assert [r.id for r in rows] == ids
            assert rows[2].readers.users == frozenset({"vic", "reader-2"})
            assert rows[2].text == ("x" if texts else "") and rows[2].length == 1
            steps = [n for n, what in enumerate(ran) if what.startswith("parsed")]
            assert [ran[n] for n in steps] == [f"parsed {i}" for i in ids]
            for one, next_one in itertools.pairwise(steps):
                assert "served" in ran[one:next_one], ran  # the loop was given back between
        done.set()
        await ticker


async def test_a_sessions_document_sizes_are_counted_as_listed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FX74: what a list is paid before it is made comes from these sizes, on each
    database: characters (not bytes) of the ids and titles, and of the reader lists as
    stored; a session's alone, and none for a session without documents. Each document's
    are kept once known, and counted alike by the store in a process that does not know
    them (another node attached it, or it was forgotten)."""
    access = AccessStore(store)
    assert await access.document_sizes("s1") == DocumentSizes(0, 0, 0)
    odd = "é\u001f😀"  # 2, 1 and 4 bytes of UTF-8, 6 of JSON
    rows = [
        DocumentRow("d1", "s1", odd, "x", Readers("d1", frozenset({"vïc"}), frozenset()), 1),
        DocumentRow("d22", "s1", "doc", "xy", Readers("d22", frozenset(), frozenset({"o"})), 2),
        DocumentRow("d3", "s2", "other", "x", Readers("d3", frozenset({"v"}), frozenset()), 3),
    ]
    for row in rows:
        await access.add_document(row, 100)
    stored = [store_access._readers_json(row.readers) for row in rows[:2]]
    assert all(s.isascii() for s in stored)
    expected = DocumentSizes(2, len("d1" + odd) + len("d22doc"), sum(map(len, stored)))
    assert await access.document_sizes("s1") == expected
    kept: OrderedDict[str, tuple[int, int]] = OrderedDict()
    monkeypatch.setattr(store_access, "_SIZES", kept)
    assert await AccessStore(store).document_sizes("s1") == expected  # counted by the store
    assert set(kept) == {"d1", "d22"}  # and kept
