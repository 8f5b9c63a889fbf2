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
    recently searched sessions' dropped past ``max_bytes`` of index (the session searched
    last is always kept whole: its size is bounded by what a session may attach)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0  # of every index kept
        self._sessions: OrderedDict[str, dict[str, DocumentIndex]] = OrderedDict()
        # Review B2 (FB1): two runs of a session searching at once read and split each
        # document once between them.
        self._indexing: dict[tuple[str, str], asyncio.Task[DocumentIndex | None]] = {}

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
            self.nbytes -= kept.pop(gone).nbytes  # detached, here or on another node
        indexes = []
        for row in readable:
            made = kept.get(row.id) or await self._index(access, session_id, row.id)
            if made is not None:
                indexes.append(made)
                self._keep(session_id, made)
        return await off_loop(lambda: search_indexed(indexes, query))

    def drop(self, session_id: str, document_id: str) -> None:
        """Forget a document detached here (another node's forgets it at its next search)."""
        dropped = self._sessions.get(session_id, {}).pop(document_id, None)
        self.nbytes -= dropped.nbytes if dropped is not None else 0

    async def _index(
        self, access: RuntimeAccess, session_id: str, document_id: str
    ) -> DocumentIndex | None:
        """The index of a document, made once however many searches wait for it (none:
        detached). A search cancelled while waiting leaves it to be made for the others."""
        key = (session_id, document_id)
        task = self._indexing.get(key)
        if task is None:
            task = asyncio.create_task(self._read_and_index(access, session_id, document_id))
            self._indexing[key] = task
            task.add_done_callback(lambda _: self._indexing.pop(key, None))
        return await asyncio.shield(task)

    async def _read_and_index(
        self, access: RuntimeAccess, session_id: str, document_id: str
    ) -> DocumentIndex | None:
        row = await access.get_document(session_id, document_id)
        if row is None:
            return None
        document = Document(row.id, row.title, row.text)
        return await off_loop(lambda: index(document))

    def _keep(self, session_id: str, made: DocumentIndex) -> None:
        """Keep ``made`` in ``session_id``'s indexes (the session searched last), and drop
        the least recently searched sessions' past the bound, one document at a time: the
        indexes kept never pass ``max_bytes`` but by the last session's own."""
        kept = self._sessions.get(session_id)
        if kept is None or kept.get(made.id) is made:  # dropped while indexing; or kept
            return
        before = kept.get(made.id)
        kept[made.id] = made
        self.nbytes += made.nbytes - (before.nbytes if before is not None else 0)
        while len(self._sessions) > 1 and self.nbytes > self.max_bytes:
            _, dropped = self._sessions.popitem(last=False)
            self.nbytes -= sum(i.nbytes for i in dropped.values())
