"""The session core: command events in, effects out -- no socket, no database.

``Session`` below is an in-memory shell: it carries effects out on a real document and
queue the way ``SessionRoom.execute`` does (store, statuses, changes, queue swap), and can
start and finish runs the way the runner does, so the tests read whole exchanges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count, pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc

from authz.policy import Subject
from authz.roles import Member, RoleTable
from session.commands import (
    CancelCommand,
    Command,
    FactCommand,
    MessageCommand,
    PinCommand,
    PolicyCommand,
    PromptCommand,
)
from session.core import (
    Ack,
    AuditRecord,
    CommandEvent,
    DocumentLimits,
    Effects,
    Finish,
    NewEntry,
    Pin,
    SessionView,
    SetFact,
    SetPolicy,
    StopRun,
    handle,
)
from session.errors import (
    Busy,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    QueueFull,
    TooLarge,
    Unavailable,
)
from session.lifecycle import PromptStatus
from session.queue import OrderingQueue, Policy, QueueLimits, Run
from session.reasons import Ending, ReasonCode
from session.schema import EntryKind, QueuedItem, SessionDocument

ROLES = {"olive": "owner", "eddie": "editor", "erin": "editor", "vic": "viewer"}


@dataclass
class Session:
    """A session as the core sees it, with an in-memory shell around it."""

    policy: Policy = Policy.QUEUE
    limits: QueueLimits = field(default_factory=QueueLimits)
    accepting_prompts: bool = True
    doc: SessionDocument = field(default_factory=lambda: SessionDocument(Doc()))
    members: dict[str, Member] = field(
        default_factory=lambda: {u: Member(u, r) for u, r in ROLES.items()}
    )
    last_seq: int = 0
    running: Run | None = None
    stored: list[NewEntry] = field(default_factory=list)
    ids: count[int] = field(default_factory=count)

    def __post_init__(self) -> None:
        self.queue = OrderingQueue(self.limits, policy=self.policy)
        self.doc.init_meta("s1", "test", self.policy.value)

    def subject(self, user_id: str) -> Subject | None:
        member = self.members.get(user_id)
        return None if member is None else Subject.of(member, RoleTable())

    def view(self) -> SessionView:
        return SessionView(
            doc=self.doc,
            queue=self.queue,
            subject=self.subject,
            running=self.running,
            last_seq=self.last_seq,
            limits=DocumentLimits(max_pins=2, max_facts=2),
            accepting_prompts=self.accepting_prompts,
        )

    def event(self, actor: str, command: Command, *, admin: bool = False) -> CommandEvent:
        return CommandEvent(actor, command, 1000 + self.last_seq, f"e{next(self.ids)}", admin)

    def send(self, actor: str, command: Command, *, admin: bool = False) -> Effects:
        """Judge the command, then carry out what was decided (as the room does)."""
        effects = handle(self.view(), self.event(actor, command, admin=admin))
        if effects.error is not None:
            assert not effects.writes and effects.ack is None
            return effects
        assert effects.ack is not None
        entry = effects.entry
        if entry is not None:
            add = self.doc.add_prompt if entry.kind is EntryKind.PROMPT else self.doc.add_message
            add(
                id=entry.id,
                seq=entry.seq,
                author=entry.author,
                text=entry.text,
                created_at=entry.created_at,
            )
            self.stored.append(entry)
            self.last_seq = entry.seq
        for finish in effects.finish:
            self.doc.finish_prompts(finish.prompt_ids, finish.ending)
        change = effects.change
        if isinstance(change, Pin):
            (self.doc.pin if change.pinned else self.doc.unpin)(change.entry_id)
        elif isinstance(change, SetFact):
            self.doc.set_fact(change.key, change.value, change.author)
        elif isinstance(change, SetPolicy):
            self.doc.set_policy(change.policy.value)
        if effects.queue is not None:
            self.queue = effects.queue
            self.doc.set_queue([QueuedItem(p.id, p.seq, p.author) for p in self.queue.pending()])
        if effects.stop is not None and effects.stop.wait and self.running is not None:
            self.finish_run(effects.stop.ending)  # the room answers once the run stopped
        return effects

    def start_run(self) -> Run | None:
        run = self.queue.next()
        if run is not None:
            self.queue.start(run)
            self.doc.start_reply(
                prompt_ids=run.ids, reply_id=f"r{run.ids[0]}", author="model", created_at=1
            )
            self.running = run
        return run

    def finish_run(self, ending: Ending | None = None) -> None:
        assert self.running is not None
        self.queue.finish(self.running.ids)
        self.doc.finish_prompts(self.running.ids, ending)
        self.running = None

    def prompt(self, actor: str, text: str = "hi") -> str:
        effects = self.send(actor, PromptCommand(f"c{next(self.ids)}", text))
        assert effects.error is None, effects.error
        assert effects.entry is not None
        return effects.entry.id


def refusal_of(effects: Effects) -> type[Exception]:
    assert effects.error is not None
    assert not effects.writes and effects.ack is None and effects.stop is None
    return type(effects.error)


# -- each command's effects -------------------------------------------------------------


def test_a_prompt_is_stored_queued_acked_and_wakes_the_runner() -> None:
    session = Session(last_seq=41)
    event = CommandEvent("eddie", PromptCommand("c1", "hello"), 5000, "p1")
    effects = handle(session.view(), event)
    assert effects.entry == NewEntry(
        id="p1",
        kind=EntryKind.PROMPT,
        author="eddie",
        command_id="c1",
        text="hello",
        seq=42,
        status=PromptStatus.QUEUED.value,
        created_at=5000,
    )
    assert effects.ack == Ack(42, (("prompt_id", "p1"),))
    assert effects.ack.reply("c1") == ('{"type": "ack", "id": "c1", "seq": 42, "prompt_id": "p1"}')
    assert effects.queue is not None and [p.id for p in effects.queue.pending()] == ["p1"]
    assert len(session.queue) == 0  # the core changed a copy
    assert effects.wake_runner and effects.stop is None and effects.finish == ()
    assert effects.audit == ()


def test_a_message_is_stored_posted_and_leaves_the_queue_alone() -> None:
    session = Session()
    effects = handle(session.view(), CommandEvent("eddie", MessageCommand("c1", "hey"), 7, "m1"))
    assert effects.entry is not None
    assert (effects.entry.kind, effects.entry.seq, effects.entry.status) == (
        EntryKind.MESSAGE,
        1,
        "posted",
    )
    assert effects.ack == Ack(1, (("message_id", "m1"),))
    assert effects.queue is None and not effects.wake_runner


def test_pin_and_unpin_an_entry_within_the_limit() -> None:
    session = Session()
    first, second, third = (session.prompt("eddie") for _ in range(3))
    assert session.send("eddie", PinCommand("c", first, True)).change == Pin(first, True)
    again = session.send("eddie", PinCommand("c", first, True))
    assert again.ack == Ack(None, (("entry_id", first),)) and not again.writes
    session.send("eddie", PinCommand("c", second, True))
    assert refusal_of(session.send("eddie", PinCommand("c", third, True))) is TooLarge
    assert session.send("eddie", PinCommand("c", first, False)).change == Pin(first, False)
    assert session.doc.pinned() == [second]
    assert refusal_of(session.send("eddie", PinCommand("c", "nope", True))) is NotFound


def test_facts_are_set_by_their_author_within_the_limit() -> None:
    session = Session()
    effects = session.send("eddie", FactCommand("c", "lang", "Python"))
    assert effects.change == SetFact("lang", "Python", "eddie")
    assert effects.ack == Ack(None, (("key", "lang"),))
    session.send("erin", FactCommand("c", "db", "PostgreSQL"))
    assert refusal_of(session.send("eddie", FactCommand("c", "os", "Linux"))) is TooLarge
    assert session.send("eddie", FactCommand("c", "db", "SQLite")).error is None  # a change
    assert refusal_of(session.send("eddie", FactCommand("c", "bad key", "x"))) is InvalidInput
    assert refusal_of(session.send("eddie", FactCommand("c", "k", "two\nlines"))) is InvalidInput
    session.send("eddie", FactCommand("c", "db", None))
    assert session.doc.fact_map() == {"lang": "Python"}


def test_a_policy_change_is_audited_and_reorders_the_queue() -> None:
    session = Session()
    session.prompt("eddie")
    effects = session.send("olive", PolicyCommand("c", Policy.COALESCE))
    assert effects.change == SetPolicy(Policy.COALESCE)
    assert effects.queue is not None and effects.queue.policy is Policy.COALESCE
    assert effects.audit == (
        AuditRecord("policy", "olive", {"policy": {"from": "queue", "to": "coalesce"}}),
    )
    assert effects.wake_runner and len(effects.queue) == 1
    assert session.send("olive", PolicyCommand("c", Policy.COALESCE)).audit == ()


def test_the_admin_door_is_not_judged_by_membership_and_audits_itself() -> None:
    session = Session()
    effects = session.send("", PolicyCommand("rest", Policy.REJECT), admin=True)
    assert effects.error is None and effects.audit == ()
    assert session.send("", FactCommand("rest", "k", "v"), admin=True).change == SetFact(
        "k", "v", ""
    )
    session.send("", FactCommand("rest", "k2", "v"), admin=True)
    assert refusal_of(session.send("", FactCommand("rest", "x", "v"), admin=True)) is TooLarge


# -- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        PromptCommand("c", "hi"),
        MessageCommand("c", "hi"),
        PinCommand("c", "e", True),
        FactCommand("c", "k", "v"),
        PolicyCommand("c", Policy.REJECT),
    ],
)
@pytest.mark.parametrize("actor", ["vic", "stranger"])
def test_a_member_without_the_capability_is_refused_and_audited(
    command: Command, actor: str
) -> None:
    session = Session()
    effects = session.send(actor, command)
    assert refusal_of(effects) is Forbidden
    assert effects.error is not None
    (record,) = effects.audit
    assert record.kind == "refused" and record.actor == actor
    assert record.data == {
        "action": f"command {type(command).__name__}",
        "reason": effects.error.message,
    }


def test_an_editor_may_not_change_the_policy() -> None:
    assert refusal_of(Session().send("eddie", PolicyCommand("c", Policy.REJECT))) is Forbidden


def test_queue_full_per_member_and_per_session() -> None:
    session = Session(limits=QueueLimits(max_pending_per_user=2, max_pending_per_session=3))
    session.prompt("eddie")
    session.prompt("eddie")
    effects = session.send("eddie", PromptCommand("c", "more"))
    assert refusal_of(effects) is QueueFull and effects.audit == ()
    session.prompt("erin")
    assert refusal_of(session.send("olive", PromptCommand("c", "more"))) is QueueFull
    assert session.last_seq == 3  # refused prompts take no sequence number


def test_reject_policy_refuses_while_busy() -> None:
    session = Session(policy=Policy.REJECT)
    session.prompt("eddie")
    assert refusal_of(session.send("erin", PromptCommand("c", "me too"))) is Busy  # waiting
    session.start_run()
    effects = session.send("erin", PromptCommand("c", "me too"))
    assert refusal_of(effects) is Busy and effects.error is not None
    assert "is running" in effects.error.message
    session.finish_run()
    assert session.send("erin", PromptCommand("c", "now")).error is None


def test_no_prompt_while_the_server_shuts_down_but_the_refusal_of_a_viewer_comes_first() -> None:
    session = Session(accepting_prompts=False)
    assert refusal_of(session.send("eddie", PromptCommand("c", "hi"))) is Unavailable
    assert refusal_of(session.send("vic", PromptCommand("c", "hi"))) is Forbidden
    assert session.send("eddie", MessageCommand("c", "bye")).error is None


# -- cancel -----------------------------------------------------------------------------


def test_cancel_a_waiting_prompt_of_ones_own() -> None:
    session = Session()
    waiting = session.prompt("eddie")
    effects = session.send("eddie", CancelCommand("c", waiting))
    assert effects.finish == (
        Finish((waiting,), Ending(ReasonCode.CANCELLED, "cancelled by eddie")),
    )
    assert effects.queue is not None and len(effects.queue) == 0
    assert effects.ack == Ack(1, (("prompt_id", waiting),))
    assert session.doc.entry(waiting).status == PromptStatus.CANCELLED.value


def test_cancel_an_unknown_prompt_or_a_message() -> None:
    session = Session()
    message = session.send("eddie", MessageCommand("c", "hi")).entry
    assert message is not None
    assert refusal_of(session.send("eddie", CancelCommand("c", "nope"))) is NotFound
    assert refusal_of(session.send("eddie", CancelCommand("c", message.id))) is NotFound


def test_cancel_anothers_prompt_needs_cancel_any() -> None:
    session = Session()
    theirs = session.prompt("erin")
    effects = session.send("eddie", CancelCommand("c", theirs))
    assert refusal_of(effects) is Forbidden
    assert [r.kind for r in effects.audit] == ["refused"]
    assert session.send("olive", CancelCommand("c", theirs)).error is None  # an owner may
    assert refusal_of(session.send("stranger", CancelCommand("c", theirs))) is Forbidden


def test_cancel_a_running_prompt_stops_the_run_and_waits() -> None:
    session = Session()
    mine = session.prompt("eddie")
    session.start_run()
    effects = session.send("eddie", CancelCommand("c", mine))
    assert effects.stop == StopRun(Ending(ReasonCode.CANCELLED, "cancelled by eddie"), wait=True)
    assert not effects.writes  # the runner settles the run
    assert effects.ack == Ack(1, (("prompt_id", mine),))
    # Settled: nothing left to cancel.
    assert refusal_of(session.send("eddie", CancelCommand("c", mine))) is Conflict


def test_a_run_answering_others_prompts_is_stopped_only_by_who_may_cancel_them_all() -> None:
    session = Session(policy=Policy.COALESCE)
    mine = session.prompt("eddie")
    session.prompt("erin")
    run = session.start_run()
    assert run is not None and len(run.prompts) == 2
    effects = session.send("eddie", CancelCommand("c", mine))
    assert refusal_of(effects) is Forbidden and effects.audit == ()
    assert session.send("olive", CancelCommand("c", mine)).stop is not None


# -- policies ---------------------------------------------------------------------------


def test_queue_policy_takes_turns_across_members() -> None:
    session = Session()
    a1, a2 = session.prompt("eddie"), session.prompt("eddie")
    b1 = session.prompt("erin")
    assert [p.id for p in session.queue.pending()] == [a1, b1, a2]


def test_coalesce_answers_every_waiting_prompt_in_one_run() -> None:
    session = Session(policy=Policy.COALESCE)
    ids = [session.prompt("eddie"), session.prompt("erin"), session.prompt("eddie")]
    run = session.start_run()
    assert run is not None and list(run.ids) == ids


def test_interrupt_supersedes_the_waiting_prompt_and_stops_the_running_one() -> None:
    session = Session(policy=Policy.INTERRUPT)
    running = session.prompt("eddie")
    session.start_run()
    waiting = session.prompt("erin")
    effects = session.send("olive", PromptCommand("c", "instead"))
    superseded = Ending(ReasonCode.SUPERSEDED, "superseded by a newer prompt from olive")
    assert effects.finish == (Finish((waiting,), superseded),)
    assert effects.stop == StopRun(superseded, wait=False)
    assert effects.queue is not None and [p.author for p in effects.queue.pending()] == ["olive"]
    session.finish_run(superseded)  # as the runner does once stopped
    assert session.doc.entry(running).status == PromptStatus.INTERRUPTED.value
    assert session.doc.entry(waiting).status == PromptStatus.INTERRUPTED.value


# -- properties -------------------------------------------------------------------------

ACTORS = [*ROLES, "stranger"]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("prompt"), st.sampled_from(ACTORS)),
        st.tuples(st.just("message"), st.sampled_from(ACTORS)),
        st.tuples(st.just("cancel"), st.sampled_from(ACTORS), st.integers(0, 30)),
        st.tuples(st.just("policy"), st.sampled_from(ACTORS), st.sampled_from(list(Policy))),
        st.tuples(
            st.just("start"),
        ),
        st.tuples(
            st.just("finish"),
        ),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(steps=steps, policy=st.sampled_from(list(Policy)))
def test_any_exchange_keeps_seqs_dense_turns_in_order_and_prompts_to_who_may(
    steps: list[tuple[object, ...]], policy: Policy
) -> None:
    session = Session(
        policy=policy, limits=QueueLimits(max_pending_per_user=3, max_pending_per_session=6)
    )
    started: list[str] = []  # prompt ids in the order their runs started
    for step in steps:
        kind = step[0]
        if kind == "start":
            run = session.start_run()
            started += [] if run is None else list(run.ids)
        elif kind == "finish":
            if session.running is not None:
                session.finish_run()
        elif kind == "prompt":
            session.send(str(step[1]), PromptCommand("c", "q"))
        elif kind == "message":
            session.send(str(step[1]), MessageCommand("c", "m"))
        elif kind == "policy":
            session.send(str(step[1]), PolicyCommand("c", Policy(str(step[2]))))
        else:
            stored = [e.id for e in session.stored if e.kind is EntryKind.PROMPT]
            target = stored[int(str(step[2])) % len(stored)] if stored else "none"
            session.send(str(step[1]), CancelCommand("c", target))
        assert len(session.queue) <= 6
    assert [e.seq for e in session.stored] == list(range(1, len(session.stored) + 1))
    prompts = [e for e in session.stored if e.kind is EntryKind.PROMPT]
    assert {e.author for e in prompts} <= {"olive", "eddie", "erin"}
    assert {e.author for e in session.stored} <= {"olive", "eddie", "erin"}
    seq_of = {e.id: e.seq for e in prompts}
    author_of = {e.id: e.author for e in prompts}
    for author in ROLES:
        theirs = [seq_of[p] for p in started if author_of[p] == author]
        assert all(a < b for a, b in pairwise(theirs))  # each member's prompts in order
