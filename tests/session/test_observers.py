"""Observers that do not keep their document, or themselves, alive."""

from __future__ import annotations

import gc
import weakref

from pycrdt import Array, Doc, TransactionEvent

from parley.session.observers import observe_weakly
from parley.session.schema import SessionDocument


class Counter:
    def __init__(self, doc: Doc) -> None:
        self.doc = doc
        self.calls = 0
        self.stop = observe_weakly(doc, self.changed)

    def changed(self, event: TransactionEvent) -> None:
        self.calls += 1


def test_an_observer_of_its_own_document_is_called_and_then_freed_with_it() -> None:
    counter = Counter(Doc())
    counter.doc.get("a", type=Array).append(1)
    assert counter.calls == 1
    gone, doc_gone = weakref.ref(counter), weakref.ref(counter.doc)
    del counter
    gc.collect()
    assert gone() is None and doc_gone() is None


def test_a_document_that_outlives_its_observer_stops_calling_it() -> None:
    doc: Doc = Doc()
    counter = Counter(doc)
    gone = weakref.ref(counter)
    del counter
    gc.collect()
    assert gone() is None
    doc.get("a", type=Array).append(1)  # no observer left to call
    doc_gone = weakref.ref(doc)
    del doc
    gc.collect()
    assert doc_gone() is None


def test_stopped_by_its_owner_first_and_the_document_let_go_at_once() -> None:
    counter = Counter(Doc())
    doc, left = counter.doc, weakref.ref(counter.doc)
    counter.stop()
    counter.stop()  # once is all it does
    doc.get("a", type=Array).append(1)
    assert counter.calls == 0
    counter.doc = Doc()  # the owner moves on to another document, and lives on
    del doc
    gc.collect()
    assert left() is None
    gone = weakref.ref(counter.doc)
    del counter
    gc.collect()
    assert gone() is None


def test_a_session_document_is_freed_with_its_document() -> None:
    document = SessionDocument(Doc())
    document.init_meta("s", "t", "queue")
    gone, doc_gone = weakref.ref(document), weakref.ref(document.doc)
    del document
    gc.collect()
    assert gone() is None and doc_gone() is None
