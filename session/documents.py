"""Passage search over documents, for the built-in ``search_documents`` tool. Pure.

Documents are split into passages (paragraphs, long ones cut at ``passage_chars``); a
passage scores the number of distinct query words it contains, its document's title
counting for each (case folded). The caller passes only the documents the run may read:
this module knows nothing of permissions.

Splitting a document into words costs about 1 s per 10 MB of text, so it is done once per
document (``index``) and a search reads only the passages its query's words are in
(``search_indexed``; review B1: every call split all of 20 MB again, 2.5 s a call).

An index is a few flat buffers, its size (``nbytes``) their sizes: review B2-3, kept as a
dict of a word to its postings, documents of distinct short words took 22-34 bytes of
memory a character, counted as five. Now at most ``MAX_INDEX_BYTES_PER_CHAR`` (words of
two astral characters each take 9); English prose takes 1, distinct short words 4.
"""

from __future__ import annotations

import heapq
import re
import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, islice

from parley.session.attribution import escape_text, quoted_in_line
from parley.session.model import ToolSpec

_WORD = re.compile(r"\w{2,}", re.UNICODE)

# The built-in tool (its capability ``tool:search_documents``; run by ``server.runtime.tools``).
SEARCH_DOCUMENTS = ToolSpec(
    "search_documents",
    "Search the documents attached to this session that the asking member may read; "
    "returns the best matching passages with their document titles.",
    {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "words to look for"}},
        "required": ["query"],
        "additionalProperties": False,
    },
)


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class Passage:
    document_id: str
    title: str
    text: str
    score: int


def _words(text: str) -> set[str]:
    return {w.casefold() for w in _WORD.findall(text)}


def passages(document: Document, passage_chars: int = 600) -> Iterator[str]:
    for paragraph in re.split(r"\n\s*\n", document.text):
        paragraph = paragraph.strip()
        for start in range(0, len(paragraph), passage_chars):
            yield paragraph[start : start + passage_chars]


# The most memory an index takes a character of its document, rounded up: distinct words
# of two characters and a space ("ab "), each costing its UTF-8 casefolded (up to 6 bytes
# a character, U+0390; 4 for astral ones), 12 bytes of offsets and one posting, and the
# text (up to 4 bytes a character): 10.7 at worst over every word character. Plus
# ``DOCUMENT_INDEX_BYTES`` a document.
MAX_INDEX_BYTES_PER_CHAR = 12
DOCUMENT_INDEX_BYTES = 512  # the index object, and its entry in a node's maps
_U32 = array("I").itemsize


@dataclass(frozen=True, slots=True)
class DocumentIndex:
    """A document split once: its passages, and for each word the passages it is in (in
    order). Immutable, so a search may read it from any thread. Kept as flat buffers (no
    object a word or a passage): the collector tracks none of them, and ``nbytes`` is what
    they hold."""

    id: str
    title: str
    title_words: frozenset[str]
    text: str  # the passages, one after another
    passage_ends: bytes  # ``array`` "I": where each passage of ``text`` ends
    words: bytes  # the distinct words, UTF-8, sorted, one after another
    word_ends: bytes  # "I": where each word of ``words`` ends
    postings: bytes  # "I": the passages each word is in, in order, one word after another
    posting_ends: bytes  # "I": where each word's passages end in ``postings``
    nbytes: int  # the memory the index holds, what keeping it is counted by

    def passage(self, position: int) -> str:
        return self.text[_span(self.passage_ends, position)]

    def found(self, word: str) -> Sequence[int]:
        """The passages ``word`` (casefolded) is in, in order (a binary search)."""
        wanted = word.encode()
        ends = memoryview(self.word_ends).cast("I")
        low, high = 0, len(ends)
        while low < high:
            middle = (low + high) // 2
            if self.words[_span(self.word_ends, middle)] < wanted:
                low = middle + 1
            else:
                high = middle
        if low == len(ends) or self.words[_span(self.word_ends, low)] != wanted:
            return ()
        return memoryview(self.postings).cast("I")[_span(self.posting_ends, low)]


def _span(ends: bytes, item: int) -> slice:
    """The span of the ``item``-th of parts one after another that end at ``ends``."""
    view = memoryview(ends).cast("I")
    return slice(view[item - 1] if item else 0, view[item])


def _ends(lengths: Iterable[int]) -> bytes:
    return array("I", accumulate(lengths)).tobytes()


def index(document: Document, passage_chars: int = 600) -> DocumentIndex:
    """Split ``document`` into passages and words: its whole cost, paid once."""
    cut = tuple(passages(document, passage_chars))
    positions: dict[bytes, list[int]] = {}
    for position, passage in enumerate(cut):
        for word in _words(passage):
            positions.setdefault(word.encode(), []).append(position)
    words = sorted(positions)
    found = [positions[w] for w in words]
    title_words = frozenset(_words(document.title))
    parts = (
        "".join(cut),
        _ends(map(len, cut)),
        b"".join(words),
        _ends(map(len, words)),
        array("I", chain.from_iterable(found)).tobytes(),
        _ends(map(len, found)),
    )
    held = sum(map(sys.getsizeof, (document.id, document.title, title_words, *title_words)))
    nbytes = DOCUMENT_INDEX_BYTES + held + sum(map(sys.getsizeof, parts))
    return DocumentIndex(document.id, document.title, title_words, *parts, nbytes)


def search_indexed(
    indexes: Sequence[DocumentIndex], query: str, *, limit: int = 5
) -> list[Passage]:
    """The best ``limit`` passages for ``query`` (ties: document order, then position).
    Its cost: the query's words, and the passages each of them is in."""
    wanted = _words(query)
    if not wanted or limit <= 0:
        return []
    best: list[tuple[int, int, int]] = []  # (-score, document order, position)
    for order, document in enumerate(indexes):
        in_title = len(wanted & document.title_words)
        hits: Counter[int] = Counter()
        for word in wanted - document.title_words:
            hits.update(document.found(word))
        scored = [(-(in_title + n), order, position) for position, n in hits.items()]
        if in_title:  # every passage scores; of those no other word is in, the first few
            count = len(document.passage_ends) // _U32
            rest = (p for p in range(count) if p not in hits)
            scored += [(-in_title, order, position) for position in islice(rest, limit)]
        best = heapq.nsmallest(limit, [*best, *scored])
    return [
        Passage(indexes[order].id, indexes[order].title, indexes[order].passage(p), -score)
        for score, order, p in best
    ]


def search(
    documents: Sequence[Document], query: str, *, limit: int = 5, passage_chars: int = 600
) -> list[Passage]:
    """``search_indexed`` over ``documents`` indexed for this search alone."""
    return search_indexed([index(d, passage_chars) for d in documents], query, limit=limit)


def render(found: Sequence[Passage]) -> str:
    """The tool result the model reads: each passage under its document's bracketed line,
    its text escaped (a member wrote it: no line of it may read as such a line). The title
    is quoted, last on the line after the document's id (``quoted_in_line``): whoever
    attached it chose it, and bare, a title ``alice asks you`` made the server's own line
    read ``[alice asks you (d1)]``; before the id, ``Run" (d-1)`` named another."""
    if not found:
        return "No passage in the documents you may read matches."
    return "\n\n".join(
        f"[document {p.document_id} titled {quoted_in_line(' '.join(p.title.split()))}]\n"
        f"{escape_text(p.text)}"
        for p in found
    )
