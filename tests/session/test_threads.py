"""The session core's rules for private side-threads, with no I/O: commands judged on a
view, the effects they have, and the committed state they lead to."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import count

import pytest
from pycrdt import Doc

from parley.authz.policy import Readers, Subject
from parley.authz.roles import Member, RoleTable
from parley.session.commands import (
    CommandError,
    Limits,
    MessageCommand,
    PromptCommand,
    parse_command,
)
from parley.session.core import (
    AuditRecord,
    CommandEvent,
    DocumentLimits,
    Effects,
    KeepPrivate,
    Recovered,
    SessionView,
    ShownRun,
    SideThread,
    StopPromptsOf,
    ThreadLimits,
    ThreadRunFinished,
    ThreadTurn,
    apply_to_threads,
    handle,
)
from parley.session.core.state import RESTRICTED_DETAILS
from parley.session.core.threads import thread_read_by, turn_read_by
from parley.session.errors import (
    Busy,
    DuplicateCommand,
    Forbidden,
    InvalidInput,
    NotFound,
    ParleyError,
    RestrictedShare,
    SessionFull,
    ThreadClosed,
    ThreadLimit,
    ThreadRunsBusy,
    TooLarge,
)
from parley.session.queue import OrderingQueue, Policy, QueueLimits
from parley.session.reasons import Ending, ReasonCode
from parley.session.schema import SessionDocument
from parley.session.thread_commands import (
    ThreadCloseCommand,
    ThreadOpenCommand,
    ThreadPromptCommand,
    ThreadShareCommand,
)

VAULT = (Readers("d1", frozenset({"bob"})),)


@dataclass
class Threads:
    """A session as the core sees it, with its side-threads kept as the room keeps them."""

    members: dict[str, str] = field(
        default_factory=lambda: {"alice": "editor", "bob": "editor", "vic": "viewer"}
    )
    limits: ThreadLimits = field(default_factory=lambda: ThreadLimits(2, 6, 1, 100))
    restricted_replies: str = "private"
    restricted_replies_by: str | None = None
    threads: dict[str, SideThread] = field(default_factory=dict)
    doc: SessionDocument = field(default_factory=lambda: SessionDocument(Doc()))
    last_seq: int = 0
    ids: count[int] = field(default_factory=count)
    max_session_bytes: int | None = None

    def subject(self, user_id: str) -> Subject | None:
        role = self.members.get(user_id)
        return None if role is None else Subject.of(Member(user_id, role), RoleTable())

    def view(self) -> SessionView:
        return SessionView(
            doc=self.doc,
            queue=OrderingQueue(QueueLimits()),
            subject=self.subject,
            running=None,
            last_seq=self.last_seq,
            limits=DocumentLimits(2, 2, self.max_session_bytes),
            document_bytes=lambda: len(self.doc.doc.get_update()),
            subjects=lambda: [s for u in self.members if (s := self.subject(u)) is not None],
            restricted_replies=self.restricted_replies,
            restricted_replies_by=self.restricted_replies_by,
            threads=self.threads,
            thread_limits=self.limits,
        )

    def send(self, actor: str, command: object) -> Effects:
        event = CommandEvent(actor, command, 1000, f"n{next(self.ids)}")  # type: ignore[arg-type]
        return self.commit(handle(self.view(), event))

    def commit(self, effects: Effects) -> Effects:
        if effects.error is None:
            apply_to_threads(self.threads, effects)
            if effects.entry is not None:
                self.doc.add_message(
                    id=effects.entry.id,
                    seq=effects.entry.seq,
                    author=effects.entry.author,
                    text=effects.entry.text,
                    created_at=0,
                    source=effects.entry.source,
                )
                self.last_seq = effects.entry.seq
        return effects

    def ok(self, actor: str, command: object) -> Effects:
        effects = self.send(actor, command)
        assert effects.error is None, effects.error
        return effects

    def refused(self, actor: str, command: object) -> ParleyError:
        effects = self.send(actor, command)
        assert effects.error is not None and not effects.writes
        return effects.error

    def open(self, actor: str = "bob") -> str:
        ack = self.ok(actor, ThreadOpenCommand("o", None, "t")).ack
        assert ack is not None
        return dict(ack.ids)["thread_id"]

    def answer(self, thread_id: str, text: str = "an answer", restriction=()) -> ThreadTurn:
        run = self._last_run(thread_id)
        finished = ThreadRunFinished(
            thread_id, run, f"{run}-reply", "model", text, None, restriction, (), (), 2000
        )
        self.commit(handle(self.view(), finished))
        return self.threads[thread_id].turns[-1]

    def _last_run(self, thread_id: str) -> str:
        return [t.id for t in self.threads[thread_id].turns if t.kind == "prompt"][-1]


def test_opening_a_thread_anchors_it_and_writes_nothing_shared() -> None:
    t = Threads()
    t.doc.add_message(id="m1", seq=1, author="alice", text="hi", created_at=0)
    t.doc.add_message(id="m2", seq=2, author="alice", text="later", created_at=0)
    t.last_seq = 2
    effects = t.ok("bob", ThreadOpenCommand("o", "m1", "check"))
    assert effects.ack is not None and dict(effects.ack.ids)["anchor_seq"] == 1
    assert effects.entry is None and effects.events == () and effects.queue is None
    unanchored = t.ok("bob", ThreadOpenCommand("o2", None, ""))
    assert unanchored.ack is not None and dict(unanchored.ack.ids)["anchor_seq"] == 2
    assert isinstance(t.refused("bob", ThreadOpenCommand("o3", None, "")), ThreadLimit)
    assert isinstance(t.refused("alice", ThreadOpenCommand("o", "nope", "")), NotFound)
    assert isinstance(t.refused("vic", ThreadOpenCommand("o", None, "")), Forbidden)


def test_a_prompt_starts_a_run_beside_the_queue() -> None:
    t = Threads()
    thread_id = t.open()
    effects = t.ok("bob", ThreadPromptCommand("p", thread_id, "is this right?"))
    assert effects.queue is None and effects.entry is None and not effects.wake_runner
    assert effects.events == ()
    assert effects.thread_run is not None and effects.thread_run.owner == "bob"
    [turn] = effects.thread_turns
    assert (turn.kind, turn.status, turn.text) == ("prompt", "running", "is this right?")
    assert isinstance(t.refused("bob", ThreadPromptCommand("q", thread_id, "more")), Busy)
    other = t.open("alice")
    # Her first run is never refused for bob's (review RV41-F1), past the session's one.
    t.ok("alice", ThreadPromptCommand("a", other, "x"))
    more = t.ok("alice", ThreadOpenCommand("o2", None, "t")).ack
    assert more is not None
    refused = t.refused("alice", ThreadPromptCommand("a2", dict(more.ids)["thread_id"], "x"))
    assert isinstance(refused, ThreadRunsBusy)  # her share: one side-thread run here
    assert isinstance(t.refused("alice", ThreadPromptCommand("a3", thread_id, "x")), NotFound)
    reply = t.answer(thread_id)
    assert (reply.kind, reply.status) == ("reply", "done")
    assert [x.status for x in t.threads[thread_id].turns] == ["done", "done"]


def test_a_member_holds_at_most_their_share_of_the_sessions_side_thread_runs() -> None:
    """Review: one member prompting in every thread of theirs held all the session's runs;
    past their share (``runs_per_member``) it is ``thread_runs_busy``, and the others keep
    the rest."""
    t = Threads(limits=ThreadLimits(4, 6, 3, 100, max_runs_per_member=2))
    hers = [t.ok("alice", ThreadOpenCommand(f"o{n}", None, "t")).ack for n in range(3)]
    threads = [dict(ack.ids)["thread_id"] for ack in hers if ack is not None]
    for n, thread_id in enumerate(threads[:2]):
        t.ok("alice", ThreadPromptCommand(f"p{n}", thread_id, "x"))
    refused = t.refused("alice", ThreadPromptCommand("p2", threads[2], "x"))
    assert isinstance(refused, ThreadRunsBusy) and "your share" in refused.message
    t.ok("bob", ThreadPromptCommand("b", t.open("bob"), "x"))  # the session's third run
    # Review RV41-F1: the session's cap refuses only a member with a run of their own, and
    # tells no count of the others' runs.
    t.members["carol"] = "editor"
    t.ok("carol", ThreadPromptCommand("c", t.open("carol"), "x"))  # past it: her first
    bobs = t.ok("bob", ThreadOpenCommand("o2", None, "t")).ack
    assert bobs is not None
    busy = t.refused("bob", ThreadPromptCommand("b2", dict(bobs.ids)["thread_id"], "x"))
    assert isinstance(busy, ThreadRunsBusy) and "yours" in busy.message
    assert not any(digit in busy.message for digit in "0123456789")
    assert ThreadLimits(max_runs_per_session=1, max_runs_per_member=2).runs_per_member == 1
    assert ThreadLimits().runs_per_member == 2  # of 4


def test_a_refusal_of_the_members_rights_is_audited_without_the_threads_text() -> None:
    """Review RV40-F4: a side-thread command refused for a missing ``prompt`` or
    ``post_message`` was ``forbidden`` with no audit record, as the session's own are."""
    t = Threads()
    thread_id = t.open()
    t.members["bob"] = "viewer"
    for command in (
        ThreadOpenCommand("o2", None, "SECRET-title"),
        ThreadPromptCommand("p", thread_id, "SECRET-text"),
        ThreadShareCommand("s", thread_id, "SECRET-text", ()),
    ):
        effects = t.send("bob", command)
        assert isinstance(effects.error, Forbidden) and not effects.writes
        [record] = effects.audit
        assert (record.kind, record.actor) == ("refused", "bob")
        assert record.data["action"] == f"command {type(command).__name__}"
        assert record.data["reason"] and "SECRET" not in str(record.data)


def test_summarising_asks_with_the_servers_instruction() -> None:
    t = Threads()
    thread_id = t.open()
    effects = t.ok("bob", ThreadPromptCommand("s", thread_id, "", summarise=True))
    [turn] = effects.thread_turns
    assert turn.summarise and turn.text.startswith("Summarise this private side-thread")
    assert t.answer(thread_id).summarise


def test_turns_are_bounded_and_a_closed_thread_takes_no_prompt() -> None:
    t = Threads()
    thread_id = t.open()
    for n in range(3):
        t.ok("bob", ThreadPromptCommand(f"p{n}", thread_id, "q"))
        t.answer(thread_id)
    assert isinstance(t.refused("bob", ThreadPromptCommand("p", thread_id, "q")), ThreadLimit)
    other = t.open()
    closed = t.ok("bob", ThreadCloseCommand("c", other, delete=False))
    assert closed.stop_threads == ()
    assert isinstance(t.refused("bob", ThreadPromptCommand("p", other, "q")), ThreadClosed)
    t.ok("bob", ThreadCloseCommand("d", other, delete=True))
    assert other not in t.threads


def test_closing_a_thread_stops_its_run() -> None:
    t = Threads()
    thread_id = t.open()
    t.ok("bob", ThreadPromptCommand("p", thread_id, "q"))
    effects = t.ok("bob", ThreadCloseCommand("c", thread_id, delete=False))
    [(stopped, ending)] = effects.stop_threads
    assert stopped == thread_id and ending.code is ReasonCode.CANCELLED


def test_sharing_picked_replies_posts_the_members_message_marked() -> None:
    t = Threads()
    thread_id = t.open()
    t.ok("bob", ThreadPromptCommand("p", thread_id, "q"))
    reply = t.answer(thread_id, "the finding")
    prompt = t.threads[thread_id].turns[0]
    bad = ThreadShareCommand("s", thread_id, None, (prompt.id,))
    assert isinstance(t.refused("bob", bad), InvalidInput)
    effects = t.ok("bob", ThreadShareCommand("s", thread_id, None, (reply.id,)))
    assert effects.entry is not None
    assert (effects.entry.author, effects.entry.text, effects.entry.source) == (
        "bob",
        "the finding",
        "private_thread",
    )
    assert [e.kind for e in effects.events] == ["message_posted"]
    assert isinstance(t.refused("alice", ThreadShareCommand("s", thread_id, "x", ())), NotFound)
    too_long = ThreadShareCommand("s", thread_id, "x" * 101, ())
    assert isinstance(t.refused("bob", too_long), TooLarge)


@pytest.mark.parametrize(
    ("policy", "chooser"),
    [("private", None), ("shared", None), ("shared", "bob"), ("shared", "alice")],
)
def test_sharing_restricted_text_follows_the_restricted_replies_policy(
    policy: str, chooser: str | None
) -> None:
    """``shared`` chosen by the admin key (None) or by a member who may read the vault
    (bob) lets it be shared; chosen by one who may not (alice), it stays private."""
    t = Threads(restricted_replies=policy, restricted_replies_by=chooser)
    thread_id = t.open()
    t.ok("bob", ThreadPromptCommand("p", thread_id, "q"))
    reply = t.answer(thread_id, "the code is 7731", VAULT)
    for share in (
        ThreadShareCommand("s", thread_id, None, (reply.id,)),
        ThreadShareCommand("t", thread_id, "my own words", ()),
    ):
        effects = t.send("bob", share)
        if policy == "private" or chooser == "alice":
            assert isinstance(effects.error, RestrictedShare)
            assert effects.error.code.value == "restricted_share"
            assert (chooser == "alice") == ("chosen by alice" in effects.error.message)
        else:
            assert effects.error is None and effects.entry is not None
            assert [a.kind for a in effects.audit] == ["thread", "reply_shared"]
            # Its readers are kept, as a shared restricted reply's are (review: a later
            # run of a member who may not read the source drew on it).
            text = effects.entry.text
            kept = KeepPrivate(effects.entry.id, "message", text, VAULT, shown=True)
            assert effects.keep == (kept,)


def test_a_full_session_takes_no_share_while_its_side_threads_go_on() -> None:
    """A share goes into the shared document, which is full; a side-thread's own turns
    are its owner's document, bounded by its own limits (``max_thread_turns``)."""
    t = Threads()
    thread_id = t.open()
    t.ok("bob", ThreadPromptCommand("p", thread_id, "q"))
    reply = t.answer(thread_id, "an answer")
    t.max_session_bytes = len(t.doc.doc.get_update()) + 5
    for share in (
        ThreadShareCommand("s", thread_id, None, (reply.id,)),
        ThreadShareCommand("t", thread_id, "my own words", ()),
    ):
        assert isinstance(t.refused("bob", share), SessionFull)
    assert t.last_seq == 0 and len(t.doc.entries()) == 0
    t.ok("bob", ThreadPromptCommand("p2", thread_id, "more"))


def test_sharing_what_the_sharer_may_no_longer_read_is_refused() -> None:
    """Under ``shared`` too: the thread shows its owner a placeholder for a reply drawn
    from a source they were denied since; sharing it must not hand the text back."""
    t = Threads(restricted_replies="shared")
    thread_id = t.open()
    t.ok("bob", ThreadPromptCommand("p", thread_id, "q"))
    reply = t.answer(thread_id, "the code is 7731", (Readers("d1", frozenset({"alice"})),))
    refused = t.refused("bob", ThreadShareCommand("s", thread_id, None, (reply.id,)))
    assert isinstance(refused, Forbidden) and "no longer read" in refused.message


def test_a_run_of_a_deleted_thread_leaves_its_audit_only() -> None:
    t = Threads()
    thread_id = t.open()
    t.ok("bob", ThreadPromptCommand("p", thread_id, "q"))
    run = t._last_run(thread_id)
    t.ok("bob", ThreadCloseCommand("d", thread_id, delete=True))
    record = AuditRecord("model_call", "bob", {"thread_id": thread_id})
    ended = Ending(ReasonCode.CANCELLED, "the side-thread was closed")
    finished = ThreadRunFinished(thread_id, run, "r", "m", "", ended, (), (), (record,), 3)
    effects = handle(t.view(), finished)
    assert effects.audit == (record,) and effects.writes
    assert effects.thread_turns == () and effects.thread_settle == ()


def test_a_thread_run_a_quota_failed_tells_when_to_send_it_again() -> None:
    """FX78: the prompt and its reply keep ``retry_at`` as the ending tells it (a session
    prompt's rule, FX75); an ending with no time and an answer tell none."""
    t = Threads()
    thread_id = t.open()
    t.ok("bob", ThreadPromptCommand("p", thread_id, "q"))
    answered = t.answer(thread_id)
    t.ok("bob", ThreadPromptCommand("p2", thread_id, "again"))
    run = t._last_run(thread_id)
    over = Ending(ReasonCode.QUOTA_EXCEEDED, "over the quota", retry_at=86_400_000)
    finished = ThreadRunFinished(thread_id, run, "r2", "m", "", over, (), (), (), 3)
    effects = handle(t.view(), finished)
    [settle] = effects.thread_settle
    assert (settle.reason_code, settle.retry_at) == ("quota_exceeded", 86_400_000)
    t.commit(effects)
    turns = t.threads[thread_id].turns
    assert [(x.status, x.retry_at) for x in turns] == [
        ("done", None),
        ("done", None),
        ("failed", 86_400_000),
        ("failed", 86_400_000),
    ]
    assert answered.retry_at is None
    t.ok("bob", ThreadPromptCommand("p3", thread_id, "once more"))
    run = t._last_run(thread_id)
    timed_out = Ending(ReasonCode.TIMEOUT, "the model took too long")
    t.commit(
        handle(t.view(), ThreadRunFinished(thread_id, run, "r3", "m", "", timed_out, (), (), (), 4))
    )
    assert [x.retry_at for x in t.threads[thread_id].turns[-2:]] == [None, None]


def test_a_member_who_loses_their_prompts_loses_their_thread_runs() -> None:
    t = Threads()
    thread_id = t.open()
    t.ok("bob", ThreadPromptCommand("p", thread_id, "q"))
    removed = Ending(ReasonCode.MEMBER_REMOVED, "bob was removed")
    effects = handle(t.view(), StopPromptsOf("bob", removed, 5))
    assert effects.stop_threads == ((thread_id, removed),)
    assert handle(t.view(), StopPromptsOf("alice", removed, 5)).stop_threads == ()


def test_a_restart_cuts_off_a_thread_prompt_that_was_running() -> None:
    """FX54: and its run is audited as a session run cut off so is (``cut_off_audit``):
    a ``model_call`` record with ``cut_off``, and ``run_ended``."""
    t = Threads()
    thread_id = t.open()
    t.ok("bob", ThreadPromptCommand("p", thread_id, "q"))
    effects = handle(t.view(), Recovered((), Policy.QUEUE, ReasonCode.SERVER_RESTART, 9))
    [settle] = effects.thread_settle
    assert (settle.status, settle.reason_code) == ("failed", "server_restart")
    call, ended = effects.audit
    assert (call.kind, call.actor, ended.kind, ended.actor) == (
        "model_call",
        "bob",
        "run_ended",
        "bob",
    )
    [prompt] = [turn for turn in t.threads[thread_id].turns if turn.kind == "prompt"]
    assert call.data["prompt_ids"] == ended.data["prompt_ids"] == [prompt.id]
    assert call.data["reply_id"] == ended.data["reply_id"] == f"{prompt.id}-reply"
    assert call.data["thread_id"] == thread_id
    assert call.data["issuers"] == [{"user_id": "bob", "role": None}]
    assert call.data["cut_off"] == ended.data["reason_code"] == "server_restart"
    t.commit(effects)
    assert not t.threads[thread_id].running


def test_a_cut_off_thread_runs_tool_calls_are_recorded_as_its_document_shows_them() -> None:
    """FX60: the record of a side-thread run cut off by a crash had ``tool_calls: null``
    even when its thread's stored document showed its steps (a socket watched it, or on a
    cluster). What the document shows is recorded, a call still out ``interrupted``; a run
    it does not show keeps null (not known)."""
    t = Threads()
    thread_id = t.open()
    t.ok("bob", ThreadPromptCommand("p", thread_id, "q"))
    [prompt] = [turn for turn in t.threads[thread_id].turns if turn.kind == "prompt"]
    steps = (("s1", "search", "done"), ("s2", "deploy", "running"))
    shown = {prompt.id: ShownRun("half an answer", steps)}
    recovered = Recovered((), Policy.QUEUE, ReasonCode.SERVER_RESTART, 9, shown_runs=shown)
    call, _ = handle(t.view(), recovered).audit
    assert call.data["tool_calls"] == [
        {"id": "s1", "tool": "search", "outcome": "done"},
        {"id": "s2", "tool": "deploy", "outcome": "interrupted"},
    ]
    unshown = Recovered((), Policy.QUEUE, ReasonCode.SERVER_RESTART, 9)
    call, _ = handle(t.view(), unshown).audit
    assert call.data["tool_calls"] is None


def test_a_thread_reply_inherits_and_the_thread_sums_up_what_it_drew_on() -> None:
    t = Threads()
    thread_id = t.open()
    t.ok("bob", ThreadPromptCommand("p", thread_id, "q"))
    t.answer(thread_id, "secret", VAULT)
    assert t.threads[thread_id].restriction == VAULT
    assert replace(t.threads[thread_id], turns=()).restriction == ()


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ('{"type": "thread_open", "id": "a", "title": 5}', "invalid"),
        ('{"type": "thread_open", "id": "a", "title": "' + "x" * 201 + '"}', "too_large"),
        ('{"type": "thread_prompt", "id": "a", "text": "x"}', "invalid"),
        ('{"type": "thread_prompt", "id": "a", "thread_id": "t", "text": " "}', "invalid"),
        ('{"type": "thread_share", "id": "a", "thread_id": "t"}', "invalid"),
        (
            '{"type": "thread_share", "id": "a", "thread_id": "t", "text": "x", "turn_ids": ["r"]}',
            "invalid",
        ),
        (
            '{"type": "thread_share", "id": "a", "thread_id": "t", "turn_ids": ["r", "r"]}',
            "invalid",
        ),
        ('{"type": "thread_share", "id": "a", "thread_id": "t", "turn_ids": []}', "invalid"),
    ],
)
def test_thread_commands_are_bounded_when_parsed(frame: str, error: str) -> None:
    with pytest.raises(CommandError) as raised:
        parse_command(frame, Limits())
    assert raised.value.code.value == error


def test_thread_commands_parse() -> None:
    share = '{"type": "thread_share", "id": "a", "thread_id": "t", "turn_ids": ["r1", "r2"]}'
    assert parse_command(share, Limits()) == ThreadShareCommand("a", "t", None, ("r1", "r2"))
    close = '{"type": "thread_delete", "id": "a", "thread_id": "t"}'
    assert parse_command(close, Limits()) == ThreadCloseCommand("a", "t", delete=True)
    summarise = '{"type": "thread_summarise", "id": "a", "thread_id": "t"}'
    assert parse_command(summarise, Limits()) == ThreadPromptCommand("a", "t", "", summarise=True)


def test_a_resent_open_or_prompt_gets_its_first_ack_and_changes_nothing() -> None:
    t = Threads()
    first = t.ok("bob", ThreadOpenCommand("o", None, "t"))
    again = t.ok("bob", ThreadOpenCommand("o", None, "t"))
    assert again.ack == first.ack and again.thread is None and len(t.threads) == 1
    assert first.ack is not None
    thread_id = dict(first.ack.ids)["thread_id"]
    asked = t.ok("bob", ThreadPromptCommand("p", thread_id, "q"))
    resent = t.ok("bob", ThreadPromptCommand("p", thread_id, "q"))
    assert resent.ack == asked.ack
    assert resent.thread_turns == () and resent.thread_run is None
    t.answer(thread_id)
    assert t.ok("bob", ThreadPromptCommand("p", thread_id, "q")).ack == asked.ack
    assert len(t.threads[thread_id].turns) == 2


def test_an_open_resent_with_other_content_is_a_conflict() -> None:
    """The id of a side-thread's opening is that opening's: resent with another title or
    anchor (after a restart, past the store's kept ack) it is a conflict, not its ack."""
    t = Threads()
    t.ok("bob", ThreadOpenCommand("o", None, "mine"))
    for other in (ThreadOpenCommand("o", None, "other"), ThreadOpenCommand("o", "e9", "mine")):
        refused = t.refused("bob", other)
        assert isinstance(refused, DuplicateCommand), refused
    assert len(t.threads) == 1


def test_a_turn_is_read_as_its_reader_may_read_it_now() -> None:
    prompt = ThreadTurn("p1", "t1", 0, "prompt", "bob", "what is it?", "done", 1)
    reply = ThreadTurn("r1", "t1", 1, "reply", "m", "it is 7731", "done", 2, VAULT)
    thread = SideThread("t1", "bob", 0, "t", "open", 0, (prompt, reply))
    bob = Subject("bob", "editor", frozenset({"read_session"}))
    assert thread_read_by(thread, bob) == thread
    denied = replace(bob, denials=frozenset({"read:d1"}))
    assert thread_read_by(thread, denied).turns == (
        prompt,
        replace(reply, text=RESTRICTED_DETAILS),
    )
    assert turn_read_by(reply, None).text == RESTRICTED_DETAILS  # no longer a member


def test_free_text_is_not_shared_while_a_reply_is_being_written() -> None:
    """Review: text copied from a reply still streaming, after a restricted search, was
    shared past ``restricted_share``: the run's reads are not the thread's turns until it
    ends. Free text waits for the run; its turns, once the run ended, are judged."""
    t = Threads()
    thread_id = t.open()
    t.ok("bob", ThreadPromptCommand("p", thread_id, "q"))
    refused = t.refused("bob", ThreadShareCommand("s", thread_id, "the code is 7731", ()))
    assert isinstance(refused, Busy) and "being written" in refused.message
    t.answer(thread_id, "the code is 7731", VAULT)
    refused = t.refused("bob", ThreadShareCommand("s2", thread_id, "the code is 7731", ()))
    assert isinstance(refused, RestrictedShare)


def test_a_thread_prompt_id_used_for_another_prompt_is_a_conflict() -> None:
    """Review: after a restart (the recent acks emptied) a thread prompt resent under its
    id with other text was acked and its text dropped unasked; the id is judged by the
    stored turns, in every thread of its member."""
    t = Threads()
    first = t.open()
    opened = t.ok("bob", ThreadOpenCommand("o2", None, "another")).ack
    assert opened is not None
    second = dict(opened.ids)["thread_id"]
    asked = t.ok("bob", ThreadPromptCommand("q1", first, "the question"))
    t.answer(first, "an answer", ())
    resent = t.ok("bob", ThreadPromptCommand("q1", first, "the question"))
    assert resent.ack == asked.ack and not resent.writes  # a resend
    for thread_id, text in ((first, "SHOULD I ROLL BACK?"), (second, "the question")):
        refused = t.refused("bob", ThreadPromptCommand("q1", thread_id, text))
        assert isinstance(refused, DuplicateCommand), refused


def test_a_side_thread_commands_id_is_no_other_commands() -> None:
    """Review: after a restart a message under a stored side-thread prompt's id was stored,
    and a side-thread prompt under an opening's id run: two commands under one id each.
    The stored threads say which ids their member used."""
    t = Threads()
    thread_id = t.open()  # opened under "o"
    t.ok("bob", ThreadPromptCommand("q1", thread_id, "the question"))
    t.answer(thread_id, "an answer", ())
    for refused in (
        t.refused("bob", MessageCommand("q1", "a note")),
        t.refused("bob", PromptCommand("o", "a prompt")),
        t.refused("bob", ThreadPromptCommand("o", thread_id, "again")),
        t.refused("bob", ThreadOpenCommand("q1", None, "another")),
    ):
        assert isinstance(refused, DuplicateCommand), refused
    assert t.ok("alice", MessageCommand("q1", "another member's id space")).ack is not None
