"""A session's document built from its stored bytes in bounded steps (sans I/O).

A load applied the stored snapshot in one call into yrs and then read the whole transcript
in one more: 60,000 short messages (14.9 MB) held the event loop for seconds, and every
other session of the node with it. Neither call lets go of the interpreter, so a thread
does not help; the work is cut instead. The document comes as parts of bounded size
(``EncodedDocument.parts``: the snapshot cut by ``split_update``), applied one a step;
the transcript's maps are taken from the array's change events as the parts arrive (a
handle by index costs a walk from the start), then read ``entries_per_step`` at a time.
The caller yields to its loop between steps (``SessionWriter.load``).
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from typing import Any

from pycrdt import Array, ArrayEvent, Doc, Map

from parley.session.schema import SessionDocument, TranscriptIndex

ENTRIES_PER_STEP = 256
"""Transcript entries read in one step: each is a map's JSON and its copy, about 10 to
40 us as the machine is loaded."""


def load_in_steps(
    parts: Sequence[bytes], *, entries_per_step: int = ENTRIES_PER_STEP
) -> Generator[None, None, SessionDocument]:
    """The session document of ``parts`` (updates in commit order), built one part or
    ``entries_per_step`` entries per step; it returns the document, the same with the same
    mirrors as ``SessionDocument`` of a document ``parts`` were applied to at once. A part
    yrs refuses raises as its ``apply_update`` does."""
    doc: Doc[Any] = Doc()
    transcript: Array[Any] = doc.get("transcript", type=Array)
    maps: list[Map[Any]] = []

    def follow(event: ArrayEvent) -> None:
        at = 0
        for change in event.delta:  # type: ignore[attr-defined]  # set in __init__
            if "retain" in change:
                at += change["retain"]
            elif "insert" in change:
                inserted = change["insert"]
                maps[at:at] = inserted
                at += len(inserted)
            else:
                del maps[at : at + change["delete"]]

    subscription = transcript.observe(follow)
    try:
        for part in parts:
            doc.apply_update(part)
            yield
    finally:
        transcript.unobserve(subscription)
    index = TranscriptIndex()
    maps.reverse()  # taken from the end, so each step's handles are freed with its step
    while maps:
        step = maps[-entries_per_step:]
        del maps[-entries_per_step:]
        with doc.transaction():  # one for the step's reads, not one per map
            for entry in reversed(step):
                if (entry_id := index.add(json.loads(str(entry)))) is not None:
                    index.entries[entry_id] = entry
        yield
    return SessionDocument(doc, index=index)
