"""SessionDocument over a real pycrdt Doc: the only ways the shared transcript changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc

from parley.session.entries import (
    MESSAGE_STATUS,
    Entry,
    EntryKind,
    Listing,
    entry_fields,
    entry_map,
    read_entry,
)
from parley.session.errors import NotFound
from parley.session.history import common_prefix
from parley.session.lifecycle import IllegalTransition, PromptStatus, ReplyStatus
from parley.session.queue import OrderingQueue, PendingPrompt, Policy, QueueLimits
from parley.session.queue_root import queue_of
from parley.session.reasons import Ending, ReasonCode
from parley.session.schema import SCHEMA_VERSION, QueuedItem, SessionDocument


def fresh() -> SessionDocument:
    return SessionDocument(Doc())


def replica(doc: SessionDocument) -> SessionDocument:
    """A second document built only from the first one's encoded state."""
    other: Doc[Any] = Doc()
    other.apply_update(doc.doc.get_update())
    return SessionDocument(other)


State = tuple[list[Entry], list[QueuedItem], dict[str, Any], bytes]


def state_of(doc: SessionDocument) -> State:
    return doc.entries(), doc.queued(), doc.meta.to_py() or {}, doc.doc.get_update()


def prompt(doc: SessionDocument, id: str, seq: int, author: str = "alice", text: str = "") -> None:
    doc.add_prompt(id=id, seq=seq, author=author, text=text or f"prompt {id}", created_at=seq)


def message(doc: SessionDocument, id: str, seq: int, author: str = "bob", text: str = "") -> None:
    doc.add_message(id=id, seq=seq, author=author, text=text or f"message {id}", created_at=seq)


def start(doc: SessionDocument, *prompt_ids: str, created_at: int = 100) -> str:
    reply_id = f"r-{prompt_ids[-1]}"
    doc.start_reply(
        prompt_ids=list(prompt_ids), reply_id=reply_id, author="model", created_at=created_at
    )
    return reply_id


def ids(doc: SessionDocument) -> list[str]:
    return [e.id for e in doc.entries()]


# -- writing --------------------------------------------------------------------------------


def test_init_meta_and_policy() -> None:
    doc = fresh()
    doc.init_meta("s1", "Planning", "queue")
    assert doc.meta.to_py() == {
        "session_id": "s1",
        "title": "Planning",
        "policy": "queue",
        "schema_version": SCHEMA_VERSION,
    }
    doc.set_policy("coalesce")
    assert replica(doc).meta["policy"] == "coalesce"


def test_add_prompt_appends_a_queued_entry() -> None:
    doc = fresh()
    doc.add_prompt(id="p1", seq=3, author="alice", text="What is 2+2?", created_at=1700)
    assert doc.entries() == [
        Entry(
            id="p1",
            seq=3,
            kind=EntryKind.PROMPT,
            author="alice",
            role="user",
            status="queued",
            content="What is 2+2?",
            created_at=1700,
        )
    ]
    assert doc.has_entry("p1") and not doc.has_entry("p2")
    assert doc.entry("p1").status == PromptStatus.QUEUED
    assert doc.queued() == []  # the caller lists it with set_queue


def test_add_message_is_posted() -> None:
    doc = fresh()
    doc.add_message(id="m1", seq=1, author="bob", text="lunch?", created_at=5)
    entry = doc.entry("m1")
    assert (entry.kind, entry.role, entry.status, entry.content, entry.author) == (
        EntryKind.MESSAGE,
        "user",
        MESSAGE_STATUS,
        "lunch?",
        "bob",
    )


def test_start_reply_inserts_the_reply_directly_after_its_prompt() -> None:
    doc = fresh()
    prompt(doc, "p1", 1)
    message(doc, "m2", 2)
    prompt(doc, "p3", 3, author="bob")
    prompt(doc, "p4", 4)
    reply_id = start(doc, "p1", created_at=77)

    assert ids(doc) == ["p1", reply_id, "m2", "p3", "p4"]
    assert doc.entry(reply_id) == Entry(
        id=reply_id,
        seq=1,  # shares its prompt's seq
        kind=EntryKind.REPLY,
        author="model",
        role="assistant",
        status="streaming",
        content="",
        created_at=77,
        reply_to="p1",
        answers=("p1",),
    )
    started = doc.entry("p1")
    assert (started.status, started.reply_id, started.started_at) == ("running", reply_id, 77)


def test_a_later_reply_lands_after_its_own_prompt_not_at_the_end() -> None:
    doc = fresh()
    for n in (1, 2, 3):
        prompt(doc, f"p{n}", n)
    r1 = start(doc, "p1")
    doc.finish_prompts(["p1"])
    r2 = start(doc, "p2")
    assert ids(doc) == ["p1", r1, "p2", r2, "p3"]
    assert ids(replica(doc)) == ["p1", r1, "p2", r2, "p3"]


def test_a_coalesced_reply_follows_the_last_prompt_it_answers() -> None:
    doc = fresh()
    prompt(doc, "p1", 1, author="alice")
    message(doc, "m2", 2)
    prompt(doc, "p3", 3, author="bob")
    prompt(doc, "p4", 4, author="carol")
    reply_id = start(doc, "p1", "p3", created_at=50)
    assert ids(doc) == ["p1", "m2", "p3", reply_id, "p4"]
    reply = doc.entry(reply_id)
    assert (reply.seq, reply.reply_to, reply.answers) == (3, "p3", ("p1", "p3"))
    for pid in ("p1", "p3"):
        assert (doc.entry(pid).status, doc.entry(pid).reply_id) == ("running", reply_id)
    assert doc.entry("p4").status == "queued"

    doc.append_reply_text(reply_id, "both answered")
    doc.finish_prompts(["p1", "p3"])
    assert [doc.entry(i).status for i in ("p1", "p3", reply_id)] == ["done"] * 3
    assert replica(doc).entries() == doc.entries()


def test_append_reply_text_accumulates_in_order() -> None:
    doc = fresh()
    prompt(doc, "p1", 1)
    reply_id = start(doc, "p1")
    for chunk in ("Hel", "lo, ", "wörld ", "🙂"):
        doc.append_reply_text(reply_id, chunk)
    assert doc.entry(reply_id).content == "Hello, wörld 🙂"
    assert replica(doc).entry(reply_id).content == "Hello, wörld 🙂"


@pytest.mark.parametrize("code", [None, *ReasonCode])
def test_finish_prompts_gives_the_prompt_and_its_reply_the_status_of_the_ending(
    code: ReasonCode | None,
) -> None:
    doc = fresh()
    prompt(doc, "p1", 1)
    reply_id = start(doc, "p1")
    ending = None if code is None else Ending(code, f"because {code}")
    doc.finish_prompts(["p1"], ending)
    p, r = doc.entry("p1"), doc.entry(reply_id)
    if ending is None:
        assert (p.status, p.reason, p.reason_code, r.status) == ("done", None, None, "done")
        return
    assert (p.status, p.reason, p.reason_code) == (ending.status, ending.reason, code)
    assert (r.status, r.reason, r.reason_code) == (ending.reply_status, ending.reason, code)


def test_a_time_to_send_again_is_written_only_where_an_ending_tells_one() -> None:
    doc = fresh()
    for n in (1, 2):
        prompt(doc, f"p{n}", n)
    quota = start(doc, "p1")
    doc.finish_prompts(["p1"], Ending(ReasonCode.QUOTA_EXCEEDED, "at quota", retry_at=86_400_000))
    other = start(doc, "p2")
    doc.finish_prompts(["p2"], Ending(ReasonCode.TIMEOUT, "too slow"))
    again = replica(doc)  # as a client (or a restart) reads it from the encoded state
    assert [again.entry(i).retry_at for i in ("p1", quota, "p2", other)] == [
        86_400_000,
        86_400_000,
        None,
        None,
    ]
    # No key at all where none is told: an entry's map is as it was before the field.
    maps = {str(m["id"]): m for m in again.doc.get("transcript", type=Array).to_py() or []}
    assert "retry_at" not in maps["p2"] and maps["p1"]["retry_at"] == 86_400_000


@pytest.mark.parametrize("code", [ReasonCode.CANCELLED, ReasonCode.SUPERSEDED])
def test_finishing_waiting_prompts_makes_no_reply(code: ReasonCode) -> None:
    doc = fresh()
    prompt(doc, "p1", 1)
    prompt(doc, "p2", 2, author="bob")
    prompt(doc, "p3", 3)
    ending = Ending(code, "withdrawn")
    doc.finish_prompts(["p2", "p3"], ending)
    for pid in ("p2", "p3"):
        entry = doc.entry(pid)
        assert (entry.status, entry.reason, entry.reply_id) == (ending.status, "withdrawn", None)
    assert [e.kind for e in doc.entries()] == [EntryKind.PROMPT] * 3
    assert doc.entry("p1").status == "queued"


def test_a_cut_off_reply_reads_as_interrupted() -> None:
    # A restart fails the running prompt, but its cut-off reply reads as interrupted.
    doc = fresh()
    prompt(doc, "p1", 1)
    reply_id = start(doc, "p1")
    doc.append_reply_text(reply_id, "partial ans")
    doc.finish_prompts(["p1"], Ending(ReasonCode.SERVER_RESTART, "server restarted"))
    assert doc.entry("p1").status == "failed"
    reply = doc.entry(reply_id)
    assert (reply.status, reply.reason, reply.content) == (
        "interrupted",
        "server restarted",
        "partial ans",
    )
    with pytest.raises(IllegalTransition):
        doc.append_reply_text(reply_id, "more")
    assert replica(doc).entry(reply_id).status == "interrupted"


# -- the queue root -------------------------------------------------------------------------


def planned(queue: OrderingQueue) -> list[QueuedItem]:
    return [QueuedItem(p.id, p.seq, p.author) for p in queue.pending()]


def test_queue_root_mirrors_waiting_prompts_in_run_order() -> None:
    # Drive the document the way the room does: the queue decides, set_queue mirrors it.
    doc, queue = fresh(), OrderingQueue(QueueLimits())
    for n, author in [(1, "alice"), (3, "alice"), (4, "bob"), (5, "carol"), (6, "alice")]:
        prompt(doc, f"p{n}", n, author=author)
        queue.push(PendingPrompt(f"p{n}", n, author))
        doc.set_queue(planned(queue))
    message(doc, "m2", 2)
    assert [q.id for q in doc.queued()] == ["p1", "p4", "p5", "p3", "p6"]

    run = queue.next()
    assert run is not None
    queue.start(run)
    start(doc, *run.ids)
    doc.set_queue(planned(queue))
    queue.remove("p5")
    doc.finish_prompts(["p5"], Ending(ReasonCode.CANCELLED, "cancelled"))
    doc.set_queue(planned(queue))

    expected = [
        QueuedItem("p4", 4, "bob"),
        QueuedItem("p3", 3, "alice"),
        QueuedItem("p6", 6, "alice"),
    ]
    assert doc.queued() == expected
    assert replica(doc).queued() == expected
    waiting = {e.id for e in doc.entries() if e.status == PromptStatus.QUEUED}
    assert {q.id for q in doc.queued()} == waiting

    queue.set_policy(Policy.COALESCE)
    doc.set_queue(planned(queue))
    assert [q.id for q in replica(doc).queued()] == ["p3", "p4", "p6"]


def test_set_queue_writes_nothing_when_nothing_changed() -> None:
    doc = fresh()
    items = [QueuedItem("p1", 1, "alice"), QueuedItem("p2", 2, "bob")]
    doc.set_queue(items)
    before = doc.doc.get_update()
    doc.set_queue(list(items))
    assert doc.doc.get_update() == before


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("", "ab"),
        ("abc", ""),
        ("abc", "abd"),
        ("abc", "bca"),
        ("abc", "ab"),
        ("ab", "abcd"),
        ("abcd", "ad"),
    ],
)
def test_set_queue_lists_exactly_the_planned_items(old: str, new: str) -> None:
    def items(letters: str) -> list[QueuedItem]:
        return [QueuedItem(f"p{c}", ord(c), f"user-{c}") for c in letters]

    doc = fresh()
    doc.set_queue(items(old))
    doc.set_queue(items(new))
    assert doc.queued() == items(new)
    assert replica(doc).queued() == items(new)


@given(
    old=st.lists(st.sampled_from("abcdefgh"), unique=True),
    new=st.lists(st.sampled_from("abcdefghij"), unique=True),
)
def test_set_queue_reaches_any_plan_from_any_plan(old: list[str], new: list[str]) -> None:
    def items(letters: list[str]) -> list[QueuedItem]:
        return [QueuedItem(f"p{c}", ord(c), f"user-{c}") for c in letters]

    doc = fresh()
    doc.set_queue(items(old))
    doc.set_queue(items(new))
    assert doc.queued() == items(new)
    assert replica(doc).queued() == items(new)


def test_a_prompt_placed_mid_queue_is_one_insert_not_a_rewrite() -> None:
    # Round-robin puts a member's new prompt between other members' prompts: the change
    # must cost about what an append costs, however long the queue behind it.
    def items(letters: str) -> list[QueuedItem]:
        return [QueuedItem(f"p{c}", ord(c), "u") for c in letters]

    def cost(old: str, new: str) -> int:
        doc = fresh()
        doc.set_queue(items(old))
        state = doc.doc.get_state()
        doc.set_queue(items(new))
        return len(doc.doc.get_update(state))

    tail = "bcdefghijklmnopqrstuvwxyz"
    appended = cost("a" + tail, "a" + tail + "A")
    inserted = cost("a" + tail, "aA" + tail)
    assert inserted < 2 * appended, (inserted, appended)


def test_each_mutator_reaches_peers_as_one_update() -> None:
    doc = fresh()
    updates: list[bytes] = []
    subscription = doc.doc.observe(lambda event: updates.append(event.update))
    try:
        prompt(doc, "p1", 1)
        doc.set_queue([QueuedItem("p1", 1, "alice")])
        message(doc, "m2", 2)
        reply_id = start(doc, "p1")
        doc.append_reply_text(reply_id, "hi")
        doc.finish_prompts(["p1"])
        doc.set_queue([])
    finally:
        doc.doc.unobserve(subscription)
    assert len(updates) == 7

    # A peer that applies exactly those updates sees what the server sees.
    peer: Doc[Any] = Doc()
    for update in updates:
        peer.apply_update(update)
    assert SessionDocument(peer).entries() == doc.entries()
    assert SessionDocument(peer).queued() == []


# -- illegal changes ------------------------------------------------------------------------


def _running_doc() -> SessionDocument:
    doc = fresh()
    doc.init_meta("s1", "t", "queue")
    prompt(doc, "p1", 1)
    prompt(doc, "p2", 2)
    prompt(doc, "p3", 3)
    message(doc, "m4", 4)
    doc.set_queue([QueuedItem("p1", 1, "alice"), QueuedItem("p2", 2, "alice")])
    reply_id = start(doc, "p1")
    doc.set_queue([QueuedItem("p2", 2, "alice")])
    doc.append_reply_text(reply_id, "so far")
    doc.finish_prompts(["p3"], Ending(ReasonCode.CANCELLED, "nope"))
    return doc


def _start(*prompt_ids: str) -> Callable[[SessionDocument], object]:
    return lambda d: d.start_reply(
        prompt_ids=list(prompt_ids), reply_id="rX", author="m", created_at=1
    )


ILLEGAL: dict[str, tuple[Callable[[SessionDocument], object], type[Exception]]] = {
    "start a running prompt": (_start("p1"), IllegalTransition),
    "start a cancelled prompt": (_start("p3"), IllegalTransition),
    "start a reply to nothing": (_start(), ValueError),
    "finish a cancelled prompt": (
        lambda d: d.finish_prompts(["p3"]),
        IllegalTransition,
    ),
    "finish a queued prompt as done": (
        lambda d: d.finish_prompts(["p2"]),
        IllegalTransition,
    ),
    "start an unknown prompt": (_start("zz"), NotFound),
    "finish an unknown prompt": (
        lambda d: d.finish_prompts(["p2", "zz"], Ending(ReasonCode.CANCELLED, "cancelled")),
        NotFound,
    ),
    "append to an unknown reply": (lambda d: d.append_reply_text("zz", "x"), NotFound),
    # The two below make a legal change before reaching the illegal one.
    "start a waiting and a running prompt together": (_start("p2", "p1"), IllegalTransition),
    "cancel a waiting and a cancelled prompt together": (
        lambda d: d.finish_prompts(["p2", "p3"], Ending(ReasonCode.CANCELLED, "again")),
        IllegalTransition,
    ),
}


@pytest.mark.parametrize("case", list(ILLEGAL))
def test_illegal_change_raises_and_leaves_the_doc_unchanged(case: str) -> None:
    change, error = ILLEGAL[case]
    doc = _running_doc()
    before = state_of(doc)
    with pytest.raises(error):
        change(doc)
    assert state_of(doc) == before
    assert state_of(replica(doc))[:3] == before[:3]


def test_appending_to_a_finished_reply_raises_and_changes_nothing() -> None:
    doc = _running_doc()
    doc.finish_prompts(["p1"])
    before = state_of(doc)
    with pytest.raises(IllegalTransition):
        doc.append_reply_text("r-p1", " and more")
    assert state_of(doc) == before
    with pytest.raises(IllegalTransition):
        doc.finish_prompts(["p1"], Ending(ReasonCode.PROVIDER_ERROR, "failed"))
    assert state_of(doc) == before


# -- reading back from the encoded state ----------------------------------------------------


def test_a_replica_reads_back_identical_entries() -> None:
    doc = _running_doc()
    doc.finish_prompts(["p1"])
    r2 = start(doc, "p2", created_at=200)
    doc.set_queue([])
    doc.append_reply_text(r2, "second ")
    doc.finish_prompts(["p2"], Ending(ReasonCode.PROVIDER_ERROR, "upstream 500"))

    copy = replica(doc)
    assert copy.entries() == doc.entries()
    assert [e.to_json() for e in copy] == [e.to_json() for e in doc]
    assert copy.queued() == doc.queued() == []
    assert copy.meta.to_py() == {
        "session_id": "s1",
        "title": "t",
        "policy": "queue",
        "schema_version": SCHEMA_VERSION,
    }
    for entry in doc.entries():
        assert copy.entry(entry.id) == entry
    # Spot-check content, not just the shape.
    assert copy.entry("r-p1").content == "so far"
    assert (copy.entry(r2).content, copy.entry(r2).status) == ("second ", "failed")
    assert copy.entry("p2").reason == "upstream 500"
    assert copy.entry("p2").reason_code == copy.entry(r2).reason_code == "provider_error"
    assert copy.entry("p2").started_at == 200


def test_a_follower_reads_what_updates_applied_to_its_doc_changed() -> None:
    """A read replica builds its document once, then applies the running node's updates to
    the raw doc: every read (entries, one entry, has_entry, its status and text) follows."""
    leader = fresh()
    follower = replica(leader)  # built before anything was written
    assert follower.entries() == []
    updates: list[bytes] = []
    subscription = leader.doc.observe(lambda event: updates.append(event.update))
    try:
        prompt(leader, "p1", 1)
        message(leader, "m2", 2)
        for update in updates:
            follower.doc.apply_update(update)
        assert ids(follower) == ["p1", "m2"] and follower.has_entry("m2")
        assert follower.entry("p1").status == PromptStatus.QUEUED.value
        updates.clear()
        reply_id = start(leader, "p1")
        leader.append_reply_text(reply_id, "half ")
        for update in updates:
            follower.doc.apply_update(update)
        assert follower.entry("p1").status == PromptStatus.RUNNING.value  # a cached copy moved
        updates.clear()
        leader.append_reply_text(reply_id, "done")
        leader.finish_prompts(["p1"])
        for update in updates:
            follower.doc.apply_update(update)
    finally:
        leader.doc.unobserve(subscription)
    assert follower.entries() == leader.entries()
    assert follower.entry(reply_id).content == "half done"
    assert follower.entry(reply_id).status == ReplyStatus.DONE.value
    # Promoted, the follower writes on top of what it followed.
    message(follower, "m3", 3)
    assert ids(follower) == ["p1", reply_id, "m2", "m3"]


def test_a_loaded_document_walks_only_to_the_entries_that_may_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Loading reads the transcript at once: yrs finds a map by index with a walk from the
    start, so a handle on every entry cost time quadratic in the length (a load's stall of
    the loop: 0.8 s at 6,000 entries). Only an entry that may still change (a prompt not
    final, a streaming reply) is walked to; the rest read back as written, and the loaded
    document goes on from where the other left off."""
    doc = fresh()
    for n in range(40):
        message(doc, f"m{n}", n)
    prompt(doc, "p1", 41)
    reply_id = start(doc, "p1")
    doc.append_reply_text(reply_id, "half ")
    prompt(doc, "p2", 42)
    walks: list[int] = []
    get = Array.__getitem__

    def counted(self: Array[Any], key: Any) -> Any:
        walks.append(key)
        return get(self, key)

    monkeypatch.setattr(Array, "__getitem__", counted)
    copy = replica(doc)
    assert len(walks) == 3  # p1, its reply, p2
    monkeypatch.undo()
    assert copy.entries() == doc.entries()
    copy.append_reply_text(reply_id, "done")
    copy.finish_prompts(["p1"])
    copy.set_queue([QueuedItem("p2", 42, "alice")])
    assert copy.entry(reply_id).content == "half done"
    assert copy.entry("p1").status == copy.entry(reply_id).status == "done"
    assert replica(copy).entries() == copy.entries()


@pytest.mark.parametrize("policy", list(Policy))
def test_queue_of_a_document_is_the_queue_that_planned_it(policy: Policy) -> None:
    """What a read replica rebuilds from the document alone: the same waiting prompts in
    the same order, the same next run, the same run in flight."""
    doc = fresh()
    doc.init_meta("s1", "t", policy.value)
    limits = QueueLimits(5, 100, 3)
    queue = OrderingQueue(limits, policy=policy)
    authors = ["ann", "bob", "ann", "cid", "bob", "ann", "cid"]
    for seq, author in enumerate(authors, start=1):
        if policy is Policy.REJECT and (queue.running is not None or len(queue)):
            break
        prompt(doc, f"p{seq}", seq, author)
        queue.push(PendingPrompt(f"p{seq}", seq, author))
        doc.set_queue([QueuedItem(p.id, p.seq, p.author) for p in queue.pending()])
        if seq == 3:
            run = queue.next()
            assert run is not None
            queue.start(run)
            start(doc, *run.ids)
            doc.set_queue([QueuedItem(p.id, p.seq, p.author) for p in queue.pending()])
    for follower in (doc, replica(doc)):
        rebuilt = queue_of(follower, limits)
        assert rebuilt.policy is policy
        assert rebuilt.pending() == queue.pending()
        assert rebuilt.running == queue.running
        assert rebuilt.next() == queue.next()
        if queue.running is not None:
            queue_done, rebuilt_done = queue.clone(), rebuilt.clone()
            queue_done.finish(queue.running.ids)
            rebuilt_done.finish(queue.running.ids)
            assert rebuilt_done.next() == queue_done.next()


def test_to_json_carries_every_field() -> None:
    doc = fresh()
    prompt(doc, "p1", 1, text="hello")
    reply_id = start(doc, "p1", created_at=9)
    assert doc.entry(reply_id).to_json() == {
        "id": reply_id,
        "seq": 1,
        "kind": "reply",
        "author": "model",
        "role": "assistant",
        "status": "streaming",
        "content": "",
        "created_at": 9,
        "reason": None,
        "reason_code": None,
        "reply_to": "p1",
        "reply_id": None,
        "answers": ["p1"],
        "started_at": None,
        "tool": None,
        "source": None,
        "retry_at": None,
    }
    assert doc.entry("p1").to_json()["reply_id"] == reply_id
    assert doc.entry("p1").to_json()["started_at"] == 9


@settings(max_examples=200, deadline=None)
@given(
    st.text(),
    st.text(),
    st.integers(0, 2**53),
    st.one_of(st.none(), st.integers(0, 2**53)),
    st.lists(st.text(max_size=8), max_size=3),
    st.sampled_from(list(EntryKind)),
)
def test_an_entry_reads_back_as_it_was_written(
    text: str, other: str, number: int, started_at: int | None, answers: list[str], kind: EntryKind
) -> None:
    """``read_entry`` reads every field back exactly, whatever the text (escapes, control
    characters, any script) and however large the numbers."""
    doc = fresh()
    fields = {
        "id": f"e{number}",
        "seq": number,
        "kind": kind,
        "author": other,
        "role": "user",
        "status": other,
        "text": text,
        "created_at": number,
    }
    optional = {
        "reason": other,
        "reason_code": "model_error",
        "reply_to": other,
        "reply_id": text,
        "answers": answers,
        "started_at": started_at,
        "tool": other,
        "source": "private_thread",
    }
    doc.transcript.append(entry_map(entry_fields(**fields, **optional)))
    read = read_entry(doc.transcript[0])
    assert read == Entry(
        id=f"e{number}",
        seq=number,
        kind=kind,
        author=other,
        role="user",
        status=other,
        content=text,
        created_at=number,
        reason=other,
        reason_code="model_error",
        reply_to=other,
        reply_id=text,
        answers=tuple(answers),
        started_at=started_at,
        tool=other,
        source="private_thread",
    )
    doc.transcript.append(entry_map(entry_fields(**fields)))  # the optional fields left out
    assert read_entry(doc.transcript[1]) == Entry(
        f"e{number}", number, kind, other, "user", other, text, number
    )


texts = st.text(min_size=1, max_size=40)
actions = st.lists(
    st.one_of(
        st.tuples(st.just("prompt"), st.sampled_from(["alice", "bob"]), texts),
        st.tuples(st.just("message"), st.sampled_from(["alice", "bob"]), texts),
        st.tuples(
            st.just("run"),
            st.sampled_from([None, *ReasonCode]),
            st.lists(texts, max_size=3),
        ),
        st.tuples(st.just("cancel"), st.integers(0, 10), st.none()),
    ),
    max_size=20,
)


def _check_listings(listings: list[Listing]) -> None:
    """The newest listing never claims to share more with an earlier one than it does,
    and after an append alone it shares all of the one before."""
    newest = listings[-1]
    for earlier in listings[-8:]:
        shared = newest.log.shared(earlier.generation, newest.generation)
        if shared is not None:
            assert min(shared, len(earlier)) <= common_prefix(earlier, newest)


def test_a_listing_says_where_it_parts_from_the_last() -> None:
    doc = fresh()
    for n in range(1, 6):
        message(doc, f"m{n}", n)
    first = doc.entries()
    prompt(doc, "p6", 6)
    second = doc.entries()
    assert second.log is first.log and second.log.shared(first.generation, second.generation) == 5
    assert doc.entries().generation == second.generation  # nothing changed: the same number
    start(doc, "p6")
    third = doc.entries()
    assert third.log.shared(second.generation, third.generation) == 5  # the prompt ran
    assert third.log.shared(first.generation, third.generation) == 5
    follower = SessionDocument(doc.doc)
    follower.entries()
    remote: Doc[Any] = Doc()
    remote.apply_update(doc.doc.get_update())
    SessionDocument(remote).add_message(id="m9", seq=9, author="x", text="t", created_at=9)
    before = follower.entries()
    doc.doc.apply_update(remote.get_update(doc.doc.get_state()))  # a change from elsewhere
    after = follower.entries()
    assert [e.id for e in after][-1] == "m9"
    assert after.log.shared(before.generation, after.generation) == 0  # read afresh


def test_a_listing_made_in_steps_copies_a_bounded_number_a_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long transcript's first listing copied every entry in one call (60,000: 45 ms of
    a held loop after a load): in steps, each copies ``steps`` at most; a change made
    between them is listed as ``entries`` lists it, and each listing's word holds."""
    doc = fresh()
    for n in range(1, 101):
        message(doc, f"m{n}", n)
    listed = SessionDocument(doc.doc)
    copied: list[str] = []
    copy = SessionDocument._copy

    def counted(self: SessionDocument, entry_id: str) -> Entry:
        copied.append(entry_id)
        return copy(self, entry_id)

    monkeypatch.setattr(SessionDocument, "_copy", counted)
    steps = 0
    for _ in listed.listing(30):
        steps += 1
        assert len(copied) == 30 * steps
        if steps == 2:
            message(listed, "m101", 101)
    assert steps == 3 and len(copied) == 101  # the last step copied the last 11
    first = listed.entries()
    assert len(copied) == 101  # nothing left for ``entries`` to copy
    assert first == SessionDocument(doc.doc).entries()
    prompt(listed, "p102", 102)
    _check_listings([first, listed.entries()])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions, st.sampled_from([Policy.QUEUE, Policy.COALESCE]))
def test_replica_equality_for_random_sessions(
    steps: list[tuple[str, Any, Any]], policy: Policy
) -> None:
    doc, queue = fresh(), OrderingQueue(QueueLimits(100, 100), policy=policy)
    seq = 0
    listings: list[Listing] = []
    for kind, arg, extra in steps:
        if kind in ("prompt", "message"):
            seq += 1
            add = prompt if kind == "prompt" else message
            add(doc, f"e{seq}", seq, author=arg, text=extra)
            if kind == "prompt":
                queue.push(PendingPrompt(f"e{seq}", seq, arg))
        elif kind == "run" and (run := queue.next()) is not None:
            queue.start(run)
            reply_id = start(doc, *run.ids, created_at=seq)
            assert doc.entries() == SessionDocument(doc.doc).entries()  # read mid-run too
            for index, chunk in enumerate(extra):
                doc.append_reply_text(reply_id, chunk)
                if index == 1:
                    doc.add_tool_step(
                        id=f"t{seq}-{reply_id}",
                        reply_id=reply_id,
                        author=run.prompts[0].author,
                        tool="search_documents",
                        status="done",
                        text=chunk,
                        created_at=seq,
                    )
                assert doc.entries() == SessionDocument(doc.doc).entries()
            doc.finish_prompts(run.ids, None if arg is None else Ending(arg, "r"))
            queue.finish(run.ids)
        elif kind == "cancel" and len(queue):
            victim = queue.pending()[arg % len(queue)].id
            queue.remove(victim)
            doc.finish_prompts([victim], Ending(ReasonCode.CANCELLED, "cancelled"))
        doc.set_queue(planned(queue))
        # Whatever the document caches for readers must follow every change.
        assert doc.entries() == SessionDocument(doc.doc).entries()
        assert doc.queued() == SessionDocument(doc.doc).queued()
        listings.append(doc.entries())
        _check_listings(listings)

    copy = replica(doc)
    assert copy.entries() == doc.entries()
    assert copy.queued() == doc.queued() == planned(queue)
    order = [e.id for e in doc.entries() if e.kind is not EntryKind.TOOL]  # steps sit between
    for entry in doc.entries():
        if entry.kind is EntryKind.REPLY:
            assert order[order.index(entry.id) - 1] == entry.reply_to == entry.answers[-1]


def test_a_tool_step_sits_directly_before_its_reply() -> None:
    doc = fresh()
    prompt(doc, "p1", 1, text="look it up")
    reply_id = start(doc, "p1", created_at=9)
    doc.add_tool_step(
        id="t1",
        reply_id=reply_id,
        author="alice",
        tool="search_documents",
        status="done",
        text="alice ran search_documents: done",
        created_at=10,
    )
    assert [e.id for e in doc.entries()] == ["p1", "t1", reply_id]
    step = doc.entry("t1")
    assert (step.kind, step.role, step.tool, step.reply_to, step.seq) == (
        EntryKind.TOOL,
        "tool",
        "search_documents",
        reply_id,
        1,
    )
    assert replica(doc).entry("t1") == step


@pytest.mark.parametrize("encode_from", [0, 1000], ids=["encoded", "pycrdt"])
def test_a_tool_step_stored_running_ends_once_and_replicas_follow(encode_from: int) -> None:
    """A call that leaves the server is stored ``running`` before it goes; it ends with its
    answer or cut short, once (review H1), written encoded or through pycrdt alike."""
    doc = SessionDocument(Doc(), encode_from=encode_from)
    prompt(doc, "p1", 1, text="deploy")
    reply_id = start(doc, "p1", created_at=9)
    doc.add_tool_step(
        id="t1",
        reply_id=reply_id,
        author="alice",
        tool="deploy",
        status="running",
        text="alice ran deploy: running\narguments: {}",
        created_at=10,
    )
    assert replica(doc).entry("t1").status == "running"
    doc.end_tool_step("t1", status="cancelled", text="alice ran deploy: cancelled\narguments: {}")
    step = doc.entry("t1")
    assert (step.status, step.content) == (
        "cancelled",
        "alice ran deploy: cancelled\narguments: {}",
    )
    assert replica(doc).entry("t1") == step
    assert doc.tool_steps(reply_id) == [step]
    with pytest.raises(IllegalTransition):
        doc.end_tool_step("t1", status="done", text="late")
    with pytest.raises(ValueError):
        doc.add_tool_step(
            id="t2", reply_id=reply_id, author="a", tool="x", status="nope", text="", created_at=11
        )


def test_facts_are_listed_by_key_whatever_order_they_were_set_in() -> None:
    """Review RI-2: the facts came in the order the process's Y.Map iterated them, which
    differed between nodes and across restarts of one; they come sorted by key, on every
    replica."""
    doc = fresh()
    keys = ["zeta", "alpha", "mid", "k9", "k1", "beta", "omega", "k5", "gamma", "delta"]
    for key in keys:
        doc.set_fact(key, f"v-{key}", "carol")
    doc.set_fact("mid", None, "carol")
    kept = sorted(set(keys) - {"mid"})
    for copy in (doc, replica(doc)):
        assert list(copy.fact_map()) == kept
        assert list(copy.facts_with_authors()) == kept
        assert copy.fact_map()["zeta"] == "v-zeta"
