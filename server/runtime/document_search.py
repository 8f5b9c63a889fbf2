"""The search behind the built-in ``search_documents`` tool, at a cost to the event loop
that does not grow with the documents.

Review B1: each call read every document's text from the store and split all of it into
words on the event loop (2.5 s for 100 documents of 200,000 characters; a turn of 8 calls
held every client of the node for most of 12 s). Now a document is indexed once
(``session.documents.index``), and both the indexing and the search run in one worker
thread shared by the process, so searches wait for each other there, not the loop. Per
call the loop reads the session's documents without their texts (which ones are attached,
and their readers, as on every node of a cluster at once: nothing to invalidate) and the
text of each readable document not indexed yet, one at a time.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from parley.server.store.access_rows import DocumentRow
from parley.server.store.port import RuntimeAccess
from parley.session.documents import Document, DocumentIndex, Passage, index, search_indexed

T = TypeVar("T")

# One thread: however many searches run at once, they take one core's worth of the GIL
# between them, and the loop the rest.
SEARCH_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parley-search")


async def off_loop(work: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(SEARCH_WORKER, work)


class DocumentSearch:
    """The indexes of the documents searched in this process, by session, the least
    recently searched sessions' dropped past ``max_chars`` of documents (the session
    searched last is always kept whole)."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self._sessions: OrderedDict[str, dict[str, DocumentIndex]] = OrderedDict()

    async def find(
        self,
        access: RuntimeAccess,
        session_id: str,
        attached: Sequence[DocumentRow],
        readable: Sequence[DocumentRow],
        query: str,
    ) -> list[Passage]:
        """The best passages for ``query`` in ``readable``, the documents of ``attached``
        (the session's, as just read, without their texts) the run may read."""
        kept = self._sessions.pop(session_id, {})
        self._sessions[session_id] = kept
        for gone in kept.keys() - {row.id for row in attached}:
            del kept[gone]  # detached, here or on another node
        for row in readable:
            if row.id not in kept:
                await self._index(access, session_id, row.id, kept)
        self._evict()
        indexes = [kept[row.id] for row in readable if row.id in kept]
        return await off_loop(lambda: search_indexed(indexes, query))

    def drop(self, session_id: str, document_id: str) -> None:
        """Forget a document detached here (another node's forgets it at its next search)."""
        self._sessions.get(session_id, {}).pop(document_id, None)

    async def _index(
        self,
        access: RuntimeAccess,
        session_id: str,
        document_id: str,
        kept: dict[str, DocumentIndex],
    ) -> None:
        row = await access.get_document(session_id, document_id)
        if row is None or document_id in kept:  # detached, or indexed by another search
            return
        document = Document(row.id, row.title, row.text)
        kept[document_id] = await off_loop(lambda: index(document))

    def _evict(self) -> None:
        chars = sum(i.chars for kept in self._sessions.values() for i in kept.values())
        while len(self._sessions) > 1 and chars > self.max_chars:
            _, kept = self._sessions.popitem(last=False)
            chars -= sum(i.chars for i in kept.values())
