"""Passage search over documents, for the built-in ``search_documents`` tool. Pure.

Documents are split into passages (paragraphs, long ones cut at ``passage_chars``); a
passage scores the number of distinct query words it contains (case folded). The caller
passes only the documents the run may read: this module knows nothing of permissions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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


def search(
    documents: Sequence[Document], query: str, *, limit: int = 5, passage_chars: int = 600
) -> list[Passage]:
    """The best ``limit`` passages for ``query`` (ties: document order, then position)."""
    wanted = _words(query)
    if not wanted:
        return []
    found: list[tuple[int, int, Passage]] = []
    for document in documents:
        title_words = _words(document.title)
        for passage in passages(document, passage_chars):
            score = len(wanted & (_words(passage) | title_words))
            if score:
                found.append(
                    (-score, len(found), Passage(document.id, document.title, passage, score))
                )
    found.sort(key=lambda item: (item[0], item[1]))
    return [passage for _, _, passage in found[:limit]]


def render(found: Sequence[Passage]) -> str:
    """The tool result the model reads: each passage under its document's bracketed line,
    its text escaped (a member wrote it: no line of it may read as such a line)."""
    if not found:
        return "No passage in the documents you may read matches."
    return "\n\n".join(
        f"[{' '.join(p.title.split())} ({p.document_id})]\n{escape_text(p.text)}" for p in found
    )
