"""The built-in ``search_documents`` over the real SQLite store: each document's text is
read and split once, off the event loop, and a search finds what it always found, in the
documents the run may read as the store has them now (review B1: every call read and split
every text on the loop, 1.4-2.2 s a call for 100 documents of 200,000 characters)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from parley.authz.policy import Readers, Subject
from parley.authz.roles import Member, RoleTable
from parley.authz.scope import RunScope, scope_for_run
from parley.server.runtime import document_search
from parley.server.runtime.document_search import DocumentSearch
from parley.server.runtime.tools import ToolRunner
from parley.server.store.access_rows import DocumentRow
from parley.server.store.sessions import Store
from parley.session.documents import Document, index, render, search
from tests.conftest import make_settings, sqlite_url
from tests.server.runtime.backend import sql_store

PARAGRAPH = " ".join(f"word{i % 97} runbook" for i in range(50))
TEXT = "\n\n".join([PARAGRAPH] * 260) + "\n\nthe vault code is 7731"  # 195,000 characters


def scope(user_id: str) -> RunScope:
    return scope_for_run([(user_id, Subject.of(Member(user_id, "editor"), RoleTable()))], [])


def row(
    session_id: str, document_id: str, title: str, users: frozenset[str], text: str = TEXT
) -> DocumentRow:
    """A document of ``text`` readable by ``users``; none: by every editor."""
    roles = frozenset() if users else frozenset({"editor"})
    return DocumentRow(document_id, session_id, title, text, Readers(document_id, users, roles), 0)


async def attach(store: Store, *rows: DocumentRow) -> None:
    for r in rows:
        await store.access.add_document(r, 100)


class Reads:
    """What the tool reads of the store and where it splits texts into words."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.texts: list[str] = []  # ids of documents read with their text
        self.lists: list[bool] = []  # ``texts`` of each list of the documents
        self.split_on: set[str] = set()  # threads that split texts or searched
        get, listed = store.access.get_document, store.access.list_documents

        async def get_document(session_id: str, document_id: str) -> DocumentRow | None:
            self.texts.append(document_id)
            return await get(session_id, document_id)

        async def list_documents(session_id: str, *, texts: bool = True) -> list[DocumentRow]:
            self.lists.append(texts)
            return await listed(session_id, texts=texts)

        monkeypatch.setattr(store.access, "get_document", get_document)
        monkeypatch.setattr(store.access, "list_documents", list_documents)
        for name in ("index", "search_indexed"):
            monkeypatch.setattr(document_search, name, self._noting(getattr(document_search, name)))

    def _noting(self, work: Callable[..., Any]) -> Callable[..., Any]:
        def noted(*args: Any, **kwargs: Any) -> Any:
            self.split_on.add(threading.current_thread().name)
            return work(*args, **kwargs)

        return noted


async def searched(tools: ToolRunner, session_id: str, user_id: str, query: str) -> str:
    done = await tools.run(
        session_id, "search_documents", "c1", {"query": query}, scope(user_id), []
    )
    assert not done.is_error
    return done.content


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with sql_store(sqlite_url(tmp_path)) as store:
        for session_id in ("s", "t"):
            await store.create_session(session_id, "t", "queue", 0)
        yield store


def tools_on(store: Store, tmp_path: Path, max_bytes: int = 10**10) -> ToolRunner:
    settings = make_settings(sqlite_url(tmp_path), tmp_path)
    return ToolRunner(settings, store.access, lambda: 0.0, DocumentSearch(max_bytes))


def index_bytes(title: str = "Ops", text: str = TEXT) -> int:
    return index(Document("d1", title, text)).nbytes


async def test_each_text_is_read_and_split_once_and_off_the_loop(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [
        row("s", "d1", "Ops", frozenset()),
        row("s", "d2", "Secrets", frozenset({"bob"})),
        row("s", "d3", "Deploys", frozenset()),
    ]
    await attach(store, *rows)
    reads = Reads(store, monkeypatch)
    tools = tools_on(store, tmp_path)

    first = await searched(tools, "s", "alice", "vault deploys")
    assert reads.texts == ["d1", "d3"]  # never bob's document, which alice may not read
    again = [await searched(tools, "s", "alice", q) for q in ("vault deploys", "word7 ops")]
    assert reads.texts == ["d1", "d3"], "no text read again"
    assert reads.lists == [False] * 3, "the documents listed without their texts"
    assert reads.split_on == {"parley-search_0"}, "split and searched off the loop's thread"

    readable = [Document(r.id, r.title, r.text) for r in (rows[0], rows[2])]
    assert first == again[0] == render(search(readable, "vault deploys"))
    assert again[1] == render(search(readable, "word7 ops"))
    assert "7731" in first and "document d3 titled" in first and "document d2 titled" not in first
    bobs = await searched(tools, "s", "bob", "vault secrets")
    assert "document d2 titled" in bobs and reads.texts == ["d1", "d3", "d2"]


async def test_a_document_detached_elsewhere_is_searched_no_more(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await attach(store, row("s", "d1", "Ops", frozenset()), row("s", "d3", "Deploys", frozenset()))
    tools = tools_on(store, tmp_path)
    assert "document d3 titled" in await searched(tools, "s", "alice", "deploys vault")
    await store.access.delete_document("s", "d3")  # as another node would: no ``drop`` here
    reads = Reads(store, monkeypatch)
    found = await searched(tools, "s", "alice", "deploys vault")
    assert "document d3 titled" not in found and "document d1 titled" in found
    assert reads.texts == []


async def test_past_the_bound_the_least_recently_searched_session_is_indexed_again(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await attach(store, row("s", "d1", "Ops", frozenset()), row("t", "e1", "Ops", frozenset()))
    reads = Reads(store, monkeypatch)
    tools = tools_on(store, tmp_path, max_bytes=index_bytes() + 100)
    for session_id in ("s", "s", "t", "t", "s"):
        assert "7731" in await searched(tools, session_id, "alice", "vault")
    assert reads.texts == ["d1", "e1", "d1"]


WORDS = " ".join(f"{i:x}" for i in range(256, 10**6))[: len(TEXT)]  # review B2-3's shape


async def test_the_bound_counts_bytes_of_index_not_characters(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review B2-3: the bound counted characters at five bytes each; documents of
    distinct short words took 22-34 bytes a character (447 to 892 MB for one session).
    Whatever the words, what a node keeps stays under its bound in bytes of index."""
    await store.create_session("u", "t", "queue", 0)
    for session_id in ("s", "t", "u"):
        ops = row(session_id, f"{session_id}1", "Ops", frozenset())
        await attach(store, ops, row(session_id, f"{session_id}2", "Words", frozenset(), WORDS))
    per_session = index_bytes() + index_bytes("Words", WORDS)
    bound = 2 * per_session + 1000
    search = DocumentSearch(bound)
    tools = ToolRunner(
        make_settings(sqlite_url(tmp_path), tmp_path), store.access, lambda: 0.0, search
    )
    reads = Reads(store, monkeypatch)
    for session_id in ("s", "t", "u", "u", "t"):
        assert "7731" in await searched(tools, session_id, "alice", "vault")
        assert search.nbytes <= bound
    assert reads.texts == ["s1", "s2", "t1", "t2", "u1", "u2"], "t kept: the last two fit"
    assert search.nbytes == 2 * per_session
    assert "7731" in await searched(tools, "s", "alice", "vault")
    assert reads.texts[6:] == ["s1", "s2"] and search.nbytes == 2 * per_session


async def test_a_session_past_the_bound_is_kept_alone_and_whole(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session searched last keeps all of its index, whatever the bound: its size is
    bounded by the documents a session may hold (docs/configuration.md), and indexing it
    again at each search would cost every session's searches (one worker thread)."""
    await attach(store, row("s", "d1", "Ops", frozenset()), row("t", "e1", "Ops", frozenset()))
    await attach(store, row("t", "e2", "Deploys", frozenset()))
    search = DocumentSearch(index_bytes() + 100)
    tools = ToolRunner(
        make_settings(sqlite_url(tmp_path), tmp_path), store.access, lambda: 0.0, search
    )
    reads = Reads(store, monkeypatch)
    for session_id in ("s", "t", "t"):
        assert "7731" in await searched(tools, session_id, "alice", "vault")
    assert reads.texts == ["d1", "e1", "e2"]
    assert search.nbytes == index_bytes() + index_bytes("Deploys"), "t alone, whole"


async def test_searches_of_one_session_at_once_index_each_document_once(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review B2 open point FB1: two runs of a session searching at once both read and
    split the same documents, one after the other in the worker."""
    await attach(store, row("s", "d1", "Ops", frozenset()), row("s", "d3", "Deploys", frozenset()))
    reads = Reads(store, monkeypatch)
    indexed: list[str] = []
    made = document_search.index
    monkeypatch.setattr(document_search, "index", lambda d: indexed.append(d.id) or made(d))
    tools = tools_on(store, tmp_path)
    found = await asyncio.gather(*(searched(tools, "s", u, "vault") for u in ("alice", "bob")))
    assert all("7731" in f for f in found)
    assert sorted(indexed) == ["d1", "d3"] and sorted(reads.texts) == ["d1", "d3"]
