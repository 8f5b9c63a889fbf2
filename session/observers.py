"""Observing a pycrdt document without the document keeping its observer alive.

A pycrdt ``Doc`` holds its observers in Rust, where Python's cyclic collector cannot see
them, and ``Doc.observe`` wraps each callback with the document itself (so a callback's
error can be kept on it). An observed document is therefore never freed until it is
unobserved, and an object that observes the document it holds with one of its own methods
is never freed either: every room loaded kept its documents (the empty one it starts
with, the one it loaded) and their whole state for as long as the process ran, and again
on every reload (found 2026-12-05: 200 rooms loaded and closed, 400 documents alive).

``observe_weakly`` registers a callback that holds its object weakly, and unobserves it
once the object is gone, which frees the document with it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from pycrdt import Doc, TransactionEvent


def observe_weakly(
    doc: Doc[Any], method: Callable[[TransactionEvent], None]
) -> Callable[[], object]:
    """``doc.observe(method)`` for a bound ``method``, holding its object weakly: a call
    that finds the object gone does nothing, and once it is collected the subscription is
    dropped. Returns what drops it sooner (once; later calls, and the object's collection
    after it, do nothing): an object that moves to another document calls it, or the
    document it left would be held until the object itself is collected."""
    reference = weakref.WeakMethod(method)

    def call(event: TransactionEvent) -> None:
        target = reference()
        if target is not None:
            target(event)

    subscription = doc.observe(call)
    finalizer = weakref.finalize(method.__self__, doc.unobserve, subscription)  # type: ignore[attr-defined]
    finalizer.atexit = False  # nothing to free at exit
    return finalizer
