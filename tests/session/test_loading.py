"""A session document built from its stored bytes in bounded steps: the same document and
the same mirrors as one built at once, each step a part or a bounded number of entries."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

import pytest
from pycrdt import Array, Doc

import parley.session.schema as schema
from parley.session.loading import load_in_steps
from parley.session.reasons import Ending, ReasonCode
from parley.session.schema import QueuedItem, SessionDocument
from parley.session.ysplit import split_update
from tests.session.test_schema import message, prompt, start

T = TypeVar("T")


def _session(encode_from: int) -> tuple[SessionDocument, list[bytes]]:
    """A session of every kind of entry in every state (a reply streaming, a prompt
    queued, a tool step, one entry deleted by an update made elsewhere), and the updates
    that made it, in order."""
    doc = SessionDocument(Doc(), encode_from=encode_from)
    updates: list[bytes] = []
    subscription = doc.doc.observe(lambda event: updates.append(event.update))
    doc.init_meta("s1", "t", "queue")
    for n in range(60):
        message(doc, f"m{n}", n)
    prompt(doc, "p1", 61)
    done = start(doc, "p1")
    doc.add_tool_step(
        id="t1", reply_id=done, author="alice", tool="search_documents", status="done",
        text="found", created_at=62,
    )  # fmt: skip
    doc.append_reply_text(done, "answered")
    doc.finish_prompts(["p1"])
    prompt(doc, "p2", 63)
    prompt(doc, "p3", 64)
    doc.finish_prompts(["p3"], Ending(ReasonCode.CANCELLED, "cancelled"))
    streaming = start(doc, "p2")
    doc.append_reply_text(streaming, "half ")
    prompt(doc, "p4", 65)
    doc.set_queue([QueuedItem("p4", 65, "alice")])
    transcript: Array[Any] = doc.doc.get("transcript", type=Array)
    del transcript[3]  # a change made elsewhere
    doc.doc.unobserve(subscription)
    return doc, updates


def run_steps(steps: Generator[None, None, T]) -> tuple[T, int]:
    """What ``steps`` returns, and how many steps it took."""
    count = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value, count
        count += 1


def _same(loaded: SessionDocument, at_once: SessionDocument) -> None:
    assert loaded.entries() == at_once.entries()
    assert loaded.queued() == at_once.queued()
    assert loaded.doc.get_update() == at_once.doc.get_update()
    assert loaded._order == at_once._order
    assert loaded._entries.keys() == at_once._entries.keys()  # handles on what may change
    assert loaded._settled.keys() == at_once._settled.keys()


@pytest.mark.parametrize("encode_from", [0, 1000])
@pytest.mark.parametrize("part_bytes", [1024, 1 << 20])
def test_a_document_loaded_in_steps_is_the_one_loaded_at_once(
    encode_from: int, part_bytes: int
) -> None:
    written, updates = _session(encode_from)
    whole = written.doc.get_update()
    parts = [*split_update(whole, part_bytes), updates[-1]]  # the deletion again: a no-op
    loaded, _ = run_steps(load_in_steps(parts, entries_per_step=7))
    at_once: Doc[Any] = Doc()
    at_once.apply_update(whole)
    _same(loaded, SessionDocument(at_once))
    assert [e.id for e in loaded.entries()][:4] == ["m0", "m1", "m2", "m4"]
    # The loaded document goes on from where the other left off.
    loaded.append_reply_text("r-p2", "done")
    loaded.finish_prompts(["p2"])
    message(loaded, "m99", 99)
    assert loaded.entry("r-p2").content == "half done"
    copy: Doc[Any] = Doc()
    copy.apply_update(loaded.doc.get_update())
    assert SessionDocument(copy).entries() == loaded.entries()


def test_the_updates_as_stored_load_as_one_document() -> None:
    """Every update of the log, one a step (a log not yet squashed into a snapshot)."""
    _, updates = _session(encode_from=0)
    loaded, steps = run_steps(load_in_steps(updates, entries_per_step=1000))
    assert steps == len(updates) + 1
    at_once: Doc[Any] = Doc()
    for update in updates:
        at_once.apply_update(update)
    _same(loaded, SessionDocument(at_once))


def test_each_step_applies_one_part_or_reads_a_bounded_number_of_entries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    written, _ = _session(encode_from=1000)
    parts = split_update(written.doc.get_update(), 1024)
    assert len(parts) > 4
    work: list[list[str]] = [[]]
    apply_update = Doc.apply_update

    def applied(doc: Doc[Any], update: bytes) -> None:
        work[-1].append("part")
        apply_update(doc, update)

    def read(fields: dict[str, Any]) -> Any:
        work[-1].append("entry")
        return copy_of(fields)

    copy_of = schema.entry_from_fields
    monkeypatch.setattr(Doc, "apply_update", applied)
    monkeypatch.setattr(schema, "entry_from_fields", read)
    steps = load_in_steps(parts, entries_per_step=5)
    with pytest.raises(StopIteration):
        while True:
            next(steps)
            work.append([])
    assert [step for step in work if "part" in step] == [["part"]] * len(parts)
    read_steps = [step for step in work if "entry" in step]
    assert len(read_steps) >= len(written.entries()) // 5
    assert all(step.count("entry") <= 5 for step in read_steps)
