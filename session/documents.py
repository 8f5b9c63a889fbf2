"""Passage search over documents, for the built-in ``search_documents`` tool. Pure.

Documents are split into passages (paragraphs, long ones cut at ``passage_chars``); a
passage scores the number of distinct query words it contains, its document's title
counting for each (case folded). The caller passes only the documents the run may read:
this module knows nothing of permissions.

Splitting a document into words costs about 1 s per 10 MB of text, so it is done once per
document (``index``) and a search reads only the passages its query's words are in
(``search_indexed``; review B1: every call split all of 20 MB again, 2.5 s a call).
"""

from __future__ import annotations

import heapq
import re
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice

from parley.session.attribution import escape_text

_WORD = re.compile(r"\w{2,}", re.UNICODE)


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


@dataclass(frozen=True, slots=True)
class DocumentIndex:
    """A document split once: its passages, and for each word the passages it is in (in
    order). Immutable, so a search may read it from any thread."""

    id: str
    title: str
    title_words: frozenset[str]
    passages: tuple[str, ...]
    postings: Mapping[str, bytes]  # the passages a word is in, in order (``array`` "I")
    chars: int  # the document's length, what keeping the index is counted by


def index(document: Document, passage_chars: int = 600) -> DocumentIndex:
    """Split ``document`` into passages and words: its whole cost, paid once."""
    cut = tuple(passages(document, passage_chars))
    positions: dict[str, list[int]] = {}
    for position, passage in enumerate(cut):
        for word in _words(passage):
            positions.setdefault(word, []).append(position)
    # Kept as bytes: the collector tracks none of them, nor the dict (lists, tuples and
    # arrays it would, 5,000 of them a document: every full collection walked them all).
    postings = {word: array("I", found).tobytes() for word, found in positions.items()}
    title_words = frozenset(_words(document.title))
    return DocumentIndex(
        document.id, document.title, title_words, cut, postings, len(document.text)
    )


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
            hits.update(memoryview(document.postings.get(word, b"")).cast("I"))
        scored = [(-(in_title + n), order, position) for position, n in hits.items()]
        if in_title:  # every passage scores; of those no other word is in, the first few
            rest = (p for p in range(len(document.passages)) if p not in hits)
            scored += [(-in_title, order, position) for position in islice(rest, limit)]
        best = heapq.nsmallest(limit, [*best, *scored])
    return [
        Passage(indexes[order].id, indexes[order].title, indexes[order].passages[p], -score)
        for score, order, p in best
    ]


def search(
    documents: Sequence[Document], query: str, *, limit: int = 5, passage_chars: int = 600
) -> list[Passage]:
    """``search_indexed`` over ``documents`` indexed for this search alone."""
    return search_indexed([index(d, passage_chars) for d in documents], query, limit=limit)


def render(found: Sequence[Passage]) -> str:
    """The tool result the model reads: each passage under its document's bracketed line,
    its text escaped (a member wrote it: no line of it may read as such a line)."""
    if not found:
        return "No passage in the documents you may read matches."
    return "\n\n".join(
        f"[{' '.join(p.title.split())} ({p.document_id})]\n{escape_text(p.text)}" for p in found
    )
