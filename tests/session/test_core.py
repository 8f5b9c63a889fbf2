"""The session core: events in, effects out -- no socket, no database.

``Session`` below is an in-memory shell: it carries effects out on a real document and
queue the way ``SessionRoom`` does (store, statuses, a run's start, changes, tool steps,
kept text, queue swap), and starts and finishes runs through the core the way the runner
does, so the tests read whole exchanges. The sections follow the core's modules: the
commands (``rules``), a run's steps, membership and restart (``runs``), and the semantic
events of each (``semantic``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import count, pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc

from parley.authz.policy import Readers, Restriction, Subject
from parley.authz.roles import Member, RoleTable
from parley.authz.scope import ContextSeen, scope_for_run
from parley.session.commands import (
    CancelCommand,
    Command,
    FactCommand,
    MessageCommand,
    PinCommand,
    PolicyCommand,
    PromptCommand,
)
from parley.session.context import FixedParts, fixed_tokens, pin_tokens
from parley.session.core import (
    Ack,
    AppendText,
    AuditRecord,
    BeginRun,
    CommandEvent,
    ContextDrawn,
    DocumentLimits,
    Effects,
    Finish,
    KeepPrivate,
    MemberUpdated,
    NewEntry,
    Pin,
    Recovered,
    ReplyState,
    RunFinished,
    RunStart,
    SessionView,
    SetFact,
    SetPolicy,
    SideThread,
    Standing,
    StopPromptsOf,
    StopRun,
    TextAppended,
    ThreadTurn,
    TokenRevoked,
    ToolStep,
    ToolStepTaken,
    WaitingPrompt,
    handle,
)
from parley.session.core.effects import EndToolStep
from parley.session.core.runs import (
    CUT_OFF_REASONS,
    RESTRICTED_REPLY,
    run_audit,
    run_audit_base,
    run_ended,
    shown_ending,
    too_large,
)
from parley.session.entries import EntryKind
from parley.session.errors import (
    Busy,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    QueueFull,
    SessionFull,
    TooLarge,
    Unavailable,
)
from parley.session.events import (
    FactSet,
    MessagePosted,
    PinChanged,
    PromptAccepted,
    ReplyCompleted,
    RunFailed,
    RunStarted,
    SessionEvent,
    SettingsChanged,
)
from parley.session.lifecycle import PromptStatus
from parley.session.queue import OrderingQueue, PendingPrompt, Policy, QueueLimits, Run
from parley.session.quota import Quotas
from parley.session.reasons import OUTCOMES, Ending, ReasonCode
from parley.session.run_fit import RunFit
from parley.session.schema import QueuedItem, SessionDocument

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
    events: list[SessionEvent] = field(default_factory=list)
    kept: list[KeepPrivate] = field(default_factory=list)
    audit: list[AuditRecord] = field(default_factory=list)
    restricted_replies: str = "private"
    restricted_replies_by: str | None = None
    max_session_bytes: int | None = None
    max_fixed_tokens: int | None = None
    server_texts: dict[str, str] = field(default_factory=dict)  # behind placeholders
    restrictions: dict[str, Restriction] = field(default_factory=dict)  # their readers
    # When a token of each member was last revoked (ms), as the shell keeps it.
    revoked_at: dict[str, int] = field(default_factory=dict)

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
            limits=DocumentLimits(2, 2, self.max_session_bytes, self.max_fixed_tokens),
            accepting_prompts=self.accepting_prompts,
            subjects=lambda: (Subject.of(m, RoleTable()) for m in self.members.values()),
            restricted_replies=self.restricted_replies,
            restricted_replies_by=self.restricted_replies_by,
            document_bytes=lambda: len(self.doc.doc.get_update()),
            standing=self.standing,
            server_text=self.server_texts.get,
            restriction_of=lambda entry_id: self.restrictions.get(entry_id, ()),
        )

    def standing(self, user_id: str) -> Standing:
        member = self.members.get(user_id)
        joined_at = 0 if member is None else member.joined_at
        return Standing(joined_at, self.revoked_at.get(user_id, 0))

    def event(self, actor: str, command: Command, *, admin: bool = False) -> CommandEvent:
        return CommandEvent(actor, command, 1000 + self.last_seq, f"e{next(self.ids)}", admin)

    def send(self, actor: str, command: Command, *, admin: bool = False) -> Effects:
        """Judge the command, then carry out what was decided (as the room does)."""
        effects = handle(self.view(), self.event(actor, command, admin=admin))
        if effects.error is None:
            assert effects.ack is not None
        return self.apply(effects)

    def apply(self, effects: Effects) -> Effects:
        """Carry out ``effects`` as the room's writer does."""
        if effects.error is not None:
            assert not effects.writes and effects.ack is None
            return effects
        self.events += effects.events
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
        begin = effects.begin
        if begin is not None:
            self.doc.start_reply(
                prompt_ids=begin.run.ids,
                reply_id=begin.reply_id,
                author=begin.author,
                created_at=begin.created_at,
            )
            self.running = begin.run
        change = effects.change
        if isinstance(change, Pin):
            (self.doc.pin if change.pinned else self.doc.unpin)(change.entry_id)
        elif isinstance(change, SetFact):
            self.doc.set_fact(change.key, change.value, change.author)
        elif isinstance(change, SetPolicy):
            self.doc.set_policy(change.policy.value)
        step = effects.tool_step
        if step is not None:
            self.doc.add_tool_step(
                id=step.id,
                reply_id=step.reply_id,
                author=step.author,
                tool=step.tool,
                status=step.status,
                text=step.text,
                created_at=step.created_at,
            )
        for end in effects.end_steps:
            self.doc.end_tool_step(end.id, status=end.status, text=end.text)
        self.kept += effects.keep
        self.audit += effects.audit
        if effects.queue is not None:
            self.queue = effects.queue
            self.doc.set_queue([QueuedItem(p.id, p.seq, p.author) for p in self.queue.pending()])
        if effects.stop is not None and effects.stop.wait and self.running is not None:
            self.finish_run(effects.stop.ending)  # the room answers once the run stopped
        return effects

    def start_run(self) -> Run | None:
        """Ask the core for the next run, as the runner does (again while prompts of
        authors who may no longer prompt fail)."""
        while self.queue.next() is not None:
            event = RunStart(2000 + self.last_seq, f"r{next(self.ids)}", "model")
            effects = self.apply(handle(self.view(), event))
            if effects.begin is not None:
                return effects.begin.run
        return None

    def finish_run(self, ending: Ending | None = None, **kwargs: object) -> Effects:
        assert self.running is not None
        event = RunFinished(self.running, ending, 3000, **kwargs)  # type: ignore[arg-type]
        effects = self.apply(handle(self.view(), event))
        self.running = None
        return effects

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


def test_a_reply_still_being_written_is_not_pinned_until_it_is_done() -> None:
    """Review I2-4: a reply pinned while it ran was judged by its text then (none); once
    done it passed the pins' share, was left out of every input, and every later pin or
    fact was refused ``too_large``. It is refused (``conflict``) while it is written."""
    session = Session()
    prompt = session.prompt("eddie", "write a lot")
    session.start_run()
    reply = session.doc.entry(prompt).reply_id
    assert reply is not None
    refused = session.send("eddie", PinCommand("c", reply, True))
    assert refusal_of(refused) is Conflict and refused.error is not None
    assert refused.error.code == "conflict" and "being written" in refused.error.message
    assert session.doc.pinned() == []
    assert session.send("eddie", PinCommand("c", prompt, True)).error is None  # its text is set
    session.finish_run()
    assert session.send("eddie", PinCommand("c", reply, True)).error is None
    assert session.doc.pinned() == [prompt, reply]


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
    assert issubclass(refusal_of(session.send("eddie", PromptCommand("c", "hi"))), Unavailable)
    assert refusal_of(session.send("vic", PromptCommand("c", "hi"))) is Forbidden
    assert session.send("eddie", MessageCommand("c", "bye")).error is None


# -- the session's size ------------------------------------------------------------------


def _full_session() -> tuple[Session, str, str]:
    """A session whose document is just under its limit, with a waiting prompt and a pin."""
    session = Session(max_session_bytes=4000)
    waiting = session.prompt("eddie", "p" * 1000)
    session.send("eddie", PinCommand("c", waiting, True))
    session.send("eddie", FactCommand("c", "lang", "Python"))
    while session.send("eddie", MessageCommand("c", "m" * 200)).error is None:
        pass
    last = session.stored[-1].id
    # Then up to the last bytes: what a 200-character message leaves could hold a pin, a
    # fact or a policy (ids and the document's client id are random: 1 run in 4 failed).
    while session.send("eddie", MessageCommand("c", "m")).error is None:
        pass
    filler = 0
    while session.send("eddie", FactCommand("c", f"{filler}", "v")).error is None:
        filler += 1
    return session, waiting, last


@pytest.mark.parametrize(
    "command",
    [
        MessageCommand("c", "m" * 200),
        PromptCommand("c", "p"),
        PinCommand("c", "PINNABLE", True),
        FactCommand("c", "os", "Linux"),
        PolicyCommand("c", Policy.COALESCE),
    ],
)
def test_a_full_session_refuses_what_adds_to_it_and_stores_nothing(command: Command) -> None:
    session, _, last = _full_session()
    if isinstance(command, PinCommand):
        command = PinCommand("c", last, True)
    before, stored = session.doc.doc.get_update(), list(session.stored)
    effects = session.send("olive", command)
    assert refusal_of(effects) is SessionFull and effects.audit == ()
    assert effects.error is not None and effects.error.code == "session_full"
    assert session.doc.doc.get_update() == before and session.stored == stored


def test_a_full_session_may_still_be_unpinned_cleared_of_facts_and_cancelled() -> None:
    session, waiting, _ = _full_session()
    assert session.send("eddie", PinCommand("c", waiting, False)).error is None
    assert session.send("eddie", FactCommand("c", "lang", None)).error is None
    assert session.send("eddie", CancelCommand("c", waiting)).error is None


def test_a_short_message_fits_where_a_long_one_would_pass_the_limit() -> None:
    session = Session()
    # Its own document's size: another's differs (random ids; 1 run in 20 took 500).
    session.max_session_bytes = len(session.doc.doc.get_update()) + 500
    assert refusal_of(session.send("eddie", MessageCommand("c", "x" * 500))) is SessionFull
    assert refusal_of(session.send("eddie", MessageCommand("c", "é" * 250))) is SessionFull
    assert session.send("eddie", MessageCommand("c", "x" * 100)).error is None


# -- the pins' and facts' share of the model's window --------------------------------------


CLAUSES = " ".join(f"clause {n} of the contract" for n in range(40))  # ~240 tokens pinned


def _pin_cost(session: Session, entry_id: str) -> int:
    return pin_tokens(session.doc.entry(entry_id))


def test_a_pin_or_fact_that_would_crowd_out_the_prompts_is_refused_and_nothing_stored() -> None:
    """Review B2: pins were counted, not sized; one editor's three long pins made every
    member's prompt fail ``too_large`` (the system text with them took the whole window),
    and the pin that did it was accepted. A pin or fact past the share is refused, with
    what to do; an unpin stays possible and makes room."""
    session = Session()
    first, second = (session.prompt("eddie", CLAUSES + f" v{n}") for n in range(2))
    session.max_fixed_tokens = fixed_tokens({}, [_pin_cost(session, first)]) + 40  # one pin
    assert session.send("eddie", PinCommand("c", first, True)).error is None
    before = session.doc.doc.get_update()
    refused = session.send("erin", PinCommand("c", second, True))
    assert refusal_of(refused) is TooLarge and refused.error is not None
    assert refused.error.code == "too_large" and "unpin" in refused.error.message
    long_fact = session.send("eddie", FactCommand("c", "terms", CLAUSES[:1900]))
    assert refusal_of(long_fact) is TooLarge
    assert session.doc.doc.get_update() == before  # nothing half-written
    assert session.send("eddie", FactCommand("c", "lang", "Python")).error is None  # it fits
    assert session.send("eddie", PinCommand("c", first, False)).error is None
    assert session.send("erin", PinCommand("c", second, True)).error is None
    assert session.doc.pinned() == [second]


def test_a_pin_is_measured_by_the_text_kept_behind_its_placeholder() -> None:
    """A run whose issuers may read a restricted entry is given its full text, kept on the
    server: that is what its pin takes for a member who may read it, and the count they are
    told is of text they may read."""
    session = Session()
    short = session.prompt("eddie", "see the tool's details")
    session.server_texts[short] = CLAUSES * 2
    session.restrictions[short] = PLANS  # eddie reads it
    session.max_fixed_tokens = fixed_tokens({}, [_pin_cost(session, short)]) + 50
    refused = session.send("eddie", PinCommand("c", short, True))
    assert refusal_of(refused) is TooLarge and refused.error is not None
    counted = fixed_tokens({}, [pin_tokens(replace(session.doc.entry(short), content=CLAUSES * 2))])
    assert f"take {counted} tokens" in refused.error.message
    assert refusal_of(session.send("", PinCommand("c", short, True), admin=True)) is TooLarge


def test_a_pinned_reply_is_measured_with_the_prompt_it_answers() -> None:
    """A pinned reply is given with the prompts it answers (``session.context``): the pin
    rule counts them with it, so a reply that fits alone but not with its long question
    is refused, and pinning the question too counts it once."""
    session = Session()
    question = session.prompt("eddie", CLAUSES)
    session.start_run()
    reply = session.doc.entry(question).reply_id
    assert reply is not None
    session.finish_run(None, reply=ReplyState(reply), text="Yes: clause 7.")
    alone = fixed_tokens({}, [_pin_cost(session, reply)])
    both = fixed_tokens({}, [_pin_cost(session, question), _pin_cost(session, reply)])
    session.max_fixed_tokens = both - 1
    assert alone <= session.max_fixed_tokens
    refused = session.send("eddie", PinCommand("c", reply, True))
    assert refusal_of(refused) is TooLarge and refused.error is not None
    assert f"take {both} tokens" in refused.error.message
    session.max_fixed_tokens = both
    assert session.send("eddie", PinCommand("c", reply, True)).error is None
    assert session.send("eddie", PinCommand("c", question, True)).error is None
    assert session.doc.pinned() == [reply, question]


PLANS = (Readers("doc:plans", users=frozenset({"eddie"})),)


def _smallest_refused_fact(words: int, pinner: str, actor: str) -> int:
    """In a session where eddie's entry hides ``words`` words of text only he may read
    behind its placeholder, pinned by ``pinner``: the fewest words of a fact ``actor`` is
    refused, as a member would find it out by trying."""
    session = Session()
    hidden = session.prompt("eddie", "plan: [restricted]")
    session.server_texts[hidden] = "plan: " + " ".join(["lorem"] * words)
    session.restrictions[hidden] = PLANS
    widest = replace(session.doc.entry(hidden), content=" ".join(["lorem"] * 300))
    session.max_fixed_tokens = fixed_tokens({}, [pin_tokens(widest)]) + 200  # both fit
    assert session.send(pinner, PinCommand("c", hidden, True)).error is None
    low, high = 1, 2000
    while low < high:
        k = (low + high) // 2
        judged = handle(session.view(), session.event(actor, FactCommand("c", "f", "a " * k)))
        if judged.error is None:
            low = k + 1
        else:
            assert refusal_of(judged) is TooLarge
            high = k
    return low


@pytest.mark.parametrize("pinner", ["erin", "eddie"])
def test_whether_a_fact_is_refused_tells_nothing_of_a_pin_one_may_not_read(pinner: str) -> None:
    """Review R3-1: each pin counted at its text kept server-side whoever set a fact, so the
    fewest words refused told erin, to the token, the size of a reply she may not read
    (A2-1 had taken only the count out of the message): pinned by her, or by eddie while
    she only set facts. She is judged by what she may read: two sessions whose hidden
    texts differ give her the same threshold; eddie, who reads them, is judged by them."""
    assert _smallest_refused_fact(100, pinner, "erin") == _smallest_refused_fact(
        250, pinner, "erin"
    )
    short, long = (_smallest_refused_fact(n, pinner, "eddie") for n in (100, 250))
    assert long < short
    assert _smallest_refused_fact(100, pinner, "erin") > short


def test_past_the_share_a_change_that_does_not_grow_it_stays_possible() -> None:
    """The window shrank (the session's model changed): the pins and facts there are take
    more than the share now. Unpins, removals and a shorter fact pass; what grows it not."""
    session = Session()
    pinned = session.prompt("eddie", CLAUSES)
    session.send("eddie", PinCommand("c", pinned, True))
    session.send("eddie", FactCommand("c", "terms", CLAUSES[:600]))
    session.max_fixed_tokens = fixed_tokens({}, ())  # the instructions' own
    assert session.send("eddie", FactCommand("c", "terms", CLAUSES[:100])).error is None
    assert refusal_of(session.send("eddie", FactCommand("c", "more", "x"))) is TooLarge
    assert session.send("eddie", FactCommand("c", "terms", None)).error is None
    assert session.send("eddie", PinCommand("c", pinned, False)).error is None


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


def test_who_may_not_cancel_at_all_is_refused_before_the_prompt_is_looked_up() -> None:
    session = Session()
    theirs = session.prompt("erin")
    for prompt_id in ("nope", theirs):  # unknown or not: the same answer
        effects = session.send("vic", CancelCommand("c", prompt_id))
        assert refusal_of(effects) is Forbidden
        assert isinstance(effects.error, Forbidden)
        assert effects.error.message == "vic may not cancel prompts"
    assert refusal_of(session.send("eddie", CancelCommand("c", "nope"))) is NotFound


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
    # Settled cancelled: a cancel again is already as asked.
    again = session.send("eddie", CancelCommand("c2", mine))
    assert again.ack == Ack(1, (("prompt_id", mine),)) and not again.writes


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


# -- a run's steps (``runs``) -----------------------------------------------------------

SECRET = (Readers("doc:plans", users=frozenset({"olive"})),)


def test_a_run_starts_with_the_prompts_the_policy_plans_and_marks_them_running() -> None:
    session = Session(policy=Policy.COALESCE)
    first, second = session.prompt("eddie"), session.prompt("erin")
    effects = handle(session.view(), RunStart(5000, "r1", "model-x"))
    assert effects.begin == BeginRun(Run(session.queue.next().prompts), "r1", "model-x", 5000)  # type: ignore[union-attr]
    assert effects.queue is not None and effects.queue.running is not None
    assert effects.queue.running.ids == (first, second) and len(session.queue) == 2
    assert effects.events == (RunStarted("r1", (first, second), ("eddie", "erin")),)
    session.apply(effects)
    assert session.doc.entry(first).status == PromptStatus.RUNNING.value
    assert session.doc.entry("r1").author == "model-x"


def test_a_coalesced_run_fails_only_a_prompt_too_large_alone_and_takes_what_fits() -> None:
    """Review J7: the shell's measure (``RunStart.fit``) fails a prompt too large alone by
    itself, audited; the next start takes the prompts that fit together, the rest wait."""
    session = Session(policy=Policy.COALESCE)
    small, huge, other, last = (session.prompt(a) for a in ("eddie", "erin", "eddie", "erin"))
    planned = (small, huge, other, last)
    ending = Ending(ReasonCode.TOO_LARGE, "the prompt … needs 9000 tokens; the window leaves 750")
    waiting = {p.id: p for p in session.queue.pending()}
    fit = RunFit(planned, ((waiting[huge], ending),), taken=2)
    effects = handle(session.view(), RunStart(1, "r", "m", fit=fit))
    assert effects.begin is None and effects.finish == (Finish((huge,), ending),)
    assert effects.audit == (run_ended("erin", [huge], None, ending),)
    session.apply(effects)
    assert session.doc.entry(huge).status == PromptStatus.FAILED.value

    fit = RunFit((small, other, last), taken=2)
    effects = handle(session.view(), RunStart(2, "r", "m", fit=fit))
    assert effects.begin is not None and effects.begin.run.ids == (small, other)
    assert effects.queue is not None and [p.id for p in effects.queue.pending()] == [last]
    stale = RunFit((small,), taken=0)  # measured for another plan: not applied
    assert handle(session.view(), RunStart(3, "r", "m", fit=stale)).begin is not None


def test_no_run_starts_when_nothing_waits_or_the_server_shuts_down() -> None:
    session = Session()
    assert handle(session.view(), RunStart(1, "r", "m")) == Effects()
    session.prompt("eddie")
    session.accepting_prompts = False
    assert handle(session.view(), RunStart(1, "r", "m")) == Effects()


def test_a_prompt_whose_author_may_no_longer_prompt_fails_forbidden_and_is_audited() -> None:
    session = Session()
    theirs = session.prompt("eddie")
    mine = session.prompt("erin")
    session.members["eddie"] = Member("eddie", "viewer")
    effects = handle(session.view(), RunStart(1, "r", "m"))
    forbidden = Ending(ReasonCode.FORBIDDEN, "the author may no longer prompt in this session")
    assert effects.begin is None and effects.finish == (Finish((theirs,), forbidden),)
    assert effects.audit == (
        AuditRecord("refused", "eddie", {"action": "run", "prompt_id": theirs}),
    )
    assert effects.events == (RunFailed((theirs,), None, ReasonCode.FORBIDDEN, forbidden.reason),)
    assert effects.queue is not None and [p.id for p in effects.queue.pending()] == [mine]
    session.apply(effects)
    assert session.doc.entry(theirs).status == PromptStatus.FAILED.value
    assert session.start_run() == Run((PendingPrompt(mine, 2, "erin"),))


def test_text_goes_into_the_document_until_the_reply_goes_private() -> None:
    view = Session().view()
    reply = ReplyState("r1")
    assert handle(view, TextAppended(reply, "hi")).append == AppendText("r1", "hi")
    private = ReplyState("r1", SECRET, private=True)
    assert handle(view, TextAppended(private, "secret")) == Effects()


def test_a_restricted_reply_goes_private_at_the_first_batch_after_grants_change() -> None:
    """Every member may read what the reply drew on, so it streams; then a member who may
    not read it is added: the next batch is kept server-side and the document marked once,
    as if the member had been there when the run drew on it."""
    session = Session()
    everyone = tuple(session.members)
    readable = (Readers("doc:plans", users=frozenset(everyone)),)
    reply = ReplyState("r1", readable)
    shown = handle(session.view(), TextAppended(reply, "part 1"))
    assert shown.append == AppendText("r1", "part 1")
    session.members["nora"] = Member("nora", "viewer")  # may not read doc:plans
    effects = handle(session.view(), TextAppended(reply, "part 2"))
    assert effects.reply == ReplyState("r1", readable, private=True)
    assert effects.append == AppendText("r1", RESTRICTED_REPLY)
    assert handle(session.view(), TextAppended(effects.reply, "part 3")) == Effects()
    session.restricted_replies = "shared"  # an owner let such replies into the document
    shared = handle(session.view(), TextAppended(reply, "part 2"))
    assert shared.append == AppendText("r1", "part 2") and shared.reply is None


def test_a_reply_drawing_on_what_not_everyone_may_read_goes_private_once() -> None:
    session = Session()
    effects = handle(session.view(), ContextDrawn(ReplyState("r1"), SECRET))
    assert effects.reply == ReplyState("r1", SECRET, private=True)
    assert effects.append == AppendText("r1", RESTRICTED_REPLY)
    again = handle(session.view(), ContextDrawn(effects.reply, ()))
    assert again.reply == effects.reply and again.append is None
    readable = (Readers("doc:all", roles=frozenset({"owner", "editor", "viewer"})),)
    open_ = handle(session.view(), ContextDrawn(ReplyState("r2"), readable))
    assert open_.reply == ReplyState("r2", readable) and open_.append is None
    session.restricted_replies = "shared"  # an owner let such replies into the document
    shared = handle(session.view(), ContextDrawn(ReplyState("r3"), SECRET))
    assert shared.reply == ReplyState("r3", SECRET) and shared.append is None


@pytest.mark.parametrize(("chooser", "shared"), [(None, True), ("olive", True), ("eddie", False)])
def test_shared_chosen_by_a_member_shares_only_what_they_may_read(
    chooser: str | None, shared: bool
) -> None:
    """Review (no confused deputy): an owner may choose ``shared`` before any reader list
    exists; material added later is judged as a reply draws on it. The admin key's choice
    (None) shares everything; a member's only what they may read (olive reads SECRET,
    eddie does not): else the reply goes private as under ``private``."""
    session = Session(restricted_replies="shared", restricted_replies_by=chooser)
    drawn = handle(session.view(), ContextDrawn(ReplyState("r1"), SECRET))
    assert drawn.reply == ReplyState("r1", SECRET, private=not shared)
    assert drawn.append == (None if shared else AppendText("r1", RESTRICTED_REPLY))
    streamed = handle(session.view(), TextAppended(ReplyState("r1", SECRET), "part"))
    assert (streamed.append == AppendText("r1", "part")) is shared


def test_shared_stops_sharing_when_its_chooser_may_no_longer_read() -> None:
    """The member who chose ``shared`` is judged as they are now: once removed, a reply
    drawing on what not every member may read goes private at its next batch."""
    session = Session(restricted_replies="shared", restricted_replies_by="olive")
    reply = ReplyState("r1", SECRET)
    assert handle(session.view(), TextAppended(reply, "one")).append == AppendText("r1", "one")
    del session.members["olive"]
    session.members["omar"] = Member("omar", "owner")
    gone = handle(session.view(), TextAppended(reply, "two"))
    assert gone.reply == ReplyState("r1", SECRET, private=True)
    assert gone.append == AppendText("r1", RESTRICTED_REPLY)


@pytest.mark.parametrize(
    ("restriction", "shown"), [((), "args -> 42"), (SECRET, "[details restricted]")]
)
def test_a_tool_step_is_shown_in_full_only_when_everyone_may_read_it(
    restriction: tuple[Readers, ...], shown: str
) -> None:
    session = Session()
    session.prompt("eddie")
    session.start_run()
    event = ToolStepTaken(
        ReplyState("r1"), ("eddie",), "search", "done", "args -> 42", restriction, 77, "t1"
    )
    effects = handle(session.view(), event)
    assert effects.tool_step == ToolStep(
        "t1", "r1", "eddie", "search", "done", f"eddie ran search: done\n{shown}", 77
    )
    assert effects.keep == (KeepPrivate("t1", "tool", "args -> 42", restriction),)
    assert effects.events == () and effects.queue is None


def test_a_tool_step_inherits_what_the_reply_drew_on() -> None:
    event = ToolStepTaken(ReplyState("r1", SECRET), ("a", "b"), "t", "error", "x", (), 1, "t1")
    effects = handle(Session().view(), event)
    assert effects.tool_step is not None
    assert effects.tool_step.text == "a, b ran t: error\n[details restricted]"
    assert effects.keep[0].restriction == SECRET


def test_an_answered_run_is_done_and_completes_its_reply() -> None:
    session = Session()
    prompt = session.prompt("eddie")
    run = session.start_run()
    assert run is not None
    reply = session.doc.entry(prompt).reply_id
    effects = session.finish_run()
    assert effects.finish == (Finish((prompt,), None),)
    assert effects.events == (ReplyCompleted(str(reply), (prompt,)),)
    assert effects.queue is not None and effects.queue.running is None
    assert session.doc.entry(prompt).status == PromptStatus.DONE.value


@pytest.mark.parametrize("code", list(ReasonCode))
def test_a_run_ended_by_any_code_reaches_the_statuses_of_the_one_table(code: ReasonCode) -> None:
    session = Session()
    prompt = session.prompt("eddie")
    session.start_run()
    reply = str(session.doc.entry(prompt).reply_id)
    ending = Ending(code, f"because {code}")
    effects = session.finish_run(ending)
    assert effects.events == (RunFailed((prompt,), reply, code, f"because {code}"),)
    assert session.doc.entry(prompt).status == OUTCOMES[code][0].value
    assert session.doc.entry(reply).status == OUTCOMES[code][1].value


def test_a_restricted_reply_is_kept_server_side_and_its_sharing_audited() -> None:
    """Under either policy the reply's readers are kept (runs that draw on it inherit them);
    under ``shared`` its being shown to everyone is audited too."""
    session = Session()
    session.prompt("eddie")
    session.start_run()
    reply = ReplyState("r", SECRET, private=True)
    calls = (AuditRecord("model_call", "eddie", {"step": 0}),)
    effects = session.finish_run(None, reply=reply, text="full text", audit=calls)
    assert effects.keep == (KeepPrivate("r", "reply", "full text", SECRET),)
    assert effects.audit == calls
    shared = Session(restricted_replies="shared")
    shared.prompt("eddie")
    shared.start_run()
    effects = shared.finish_run(None, reply=ReplyState("r", SECRET), text="t", audit=calls)
    drew_on = [r.to_json() for r in SECRET]
    assert effects.keep == (KeepPrivate("r", "reply", "t", SECRET, shown=True),)
    assert effects.audit == (
        AuditRecord("reply_shared", "policy", {"reply_id": "r", "drew_on": drew_on}),
        *calls,
    )


def test_a_reply_kept_private_under_a_members_shared_is_audited_with_why() -> None:
    session = Session(restricted_replies="shared", restricted_replies_by="eddie")
    session.prompt("eddie")
    session.start_run()
    reply = ReplyState("r", SECRET, private=True)
    effects = session.finish_run(None, reply=reply, text="full text")
    assert effects.keep == (KeepPrivate("r", "reply", "full text", SECRET),)
    (kept,) = effects.audit
    assert (kept.kind, kept.data["reply_id"]) == ("reply_kept_private", "r")
    assert kept.data["drew_on"] == [r.to_json() for r in SECRET]
    assert "chosen by eddie, who may not read" in kept.data["reason"]


def test_a_completed_replys_text_goes_out_only_when_everyone_may_read_it() -> None:
    """What a ``reply.completed`` webhook may carry: the text of an answered reply, None for
    one that drew on restricted material, nothing for a run that ended unanswered."""
    session = Session()
    session.prompt("eddie")
    session.start_run()
    assert session.finish_run(None, reply=ReplyState("r"), text="hi").replies == (("r", "hi"),)
    session.prompt("eddie")
    session.start_run()
    restricted = ReplyState("r2", SECRET, private=True)
    assert session.finish_run(None, reply=restricted, text="x").replies == (("r2", None),)
    session.prompt("eddie")
    session.start_run()
    ended = session.finish_run(Ending(ReasonCode.TIMEOUT, "t"), reply=ReplyState("r3"), text="x")
    assert ended.replies == ()


def test_a_run_finished_after_the_queue_moved_on_leaves_the_queue_alone() -> None:
    session = Session()
    prompt = session.prompt("eddie")
    run = Run((PendingPrompt(prompt, 1, "eddie"),))
    effects = handle(session.view(), RunFinished(run, Ending(ReasonCode.TIMEOUT, "late"), 1))
    assert effects.queue is not None and [p.id for p in effects.queue.pending()] == [prompt]


def test_the_audit_base_of_a_run_names_its_issuers_scope_and_context() -> None:
    session = Session()
    run = Run((PendingPrompt("p1", 1, "eddie"), PendingPrompt("p2", 2, "erin")))
    subjects = [session.subject(u) for u in ("eddie", "erin")]
    scope = scope_for_run([(s.user_id, s) for s in subjects if s is not None], ())
    seen = ContextSeen(["p1", "p2"], [{"entry_id": "x", "reason": "private"}], ())
    base = run_audit_base(run, "r1", scope, seen)
    assert base["prompt_ids"] == ["p1", "p2"] and base["reply_id"] == "r1"
    assert base["issuers"] == [
        {"user_id": "eddie", "role": "editor"},
        {"user_id": "erin", "role": "editor"},
    ]
    assert base["capabilities"] == sorted(scope.capabilities) and base["tools_offered"] == []
    assert base["context_included"] == ["p1", "p2"]
    assert base["context_withheld"] == [{"entry_id": "x", "reason": "private"}]


def test_run_audit_records_each_call_each_refusal_and_an_unanswered_end() -> None:
    base = {"prompt_ids": ["p1"], "reply_id": "r1", "issuers": [{"user_id": "eddie"}]}
    calls = [{"step": 0}, {"step": 1}]
    refusals = [{"tool": "rm"}]
    done = run_audit(base, calls, refusals, None)
    assert [r.kind for r in done] == ["model_call", "model_call", "tool_refused"]
    assert done[1].data == {**base, "step": 1} and done[2].actor == "eddie"
    ended = run_audit(base, [], [], Ending(ReasonCode.TIMEOUT, "slow"))
    assert ended == (
        AuditRecord(
            "run_ended",
            "eddie",
            {"prompt_ids": ["p1"], "reply_id": "r1", "reason_code": "timeout", "reason": "slow"},
        ),
    )


def test_a_context_that_cannot_fit_ends_the_run_too_large() -> None:
    assert too_large(100, 100) is None
    ending = too_large(101, 100)
    assert ending is not None and ending.code is ReasonCode.TOO_LARGE
    assert "101 tokens" in ending.reason and "leaves 100" in ending.reason


def test_a_window_filled_before_any_prompt_is_told_by_what_fills_it() -> None:
    """Review RV38-F1: a summary filled the window and the reason said to remove a fact or
    unpin a message, in a session with neither: nothing a member could do fixed it."""
    summary = too_large(300, 200, FixedParts(260, summary=180, tools=30))
    assert summary is not None and summary.code is ReasonCode.TOO_LARGE
    assert summary.reason.startswith(
        "what every call carries needs 260 tokens before any prompt (the summary of older "
        "turns 180, the tool definitions 30); the window leaves 200: "
    )
    assert "PARLEY_SUMMARY_MAX_OUTPUT_TOKENS" in summary.reason
    assert "fact" not in summary.reason and "unpin" not in summary.reason
    held = too_large(300, 200, FixedParts(260, summary=40, held=170))
    assert held is not None and held.reason.index("facts and pinned messages 170") < (
        held.reason.index("summary of older turns 40")
    )
    assert "remove a fact or unpin a message first" in held.reason
    assert held.uncounted is not None and "170" not in held.uncounted
    assert "(the facts and pinned messages, the summary of older turns)" in held.uncounted
    bare = too_large(300, 200, FixedParts(260))  # the instructions alone: a tiny window
    assert bare is not None and "larger window" in bare.reason and "fact" not in bare.reason


def test_a_window_that_leaves_no_room_for_a_prompt_blames_what_fills_it() -> None:
    """Review RV39-F1: what every call carries fit the window but left it too little for any
    prompt, and a one-character prompt was told the prompt needed too many tokens, with no
    cause named and nothing anyone could do."""
    tight = too_large(1197, 1188, FixedParts(1180, summary=544, held=560, tools=40))
    assert tight is not None and tight.code is ReasonCode.TOO_LARGE
    assert tight.reason.startswith(
        "what every call carries needs 1180 tokens before any prompt (the facts and pinned "
        "messages 560, the summary of older turns 544, the tool definitions 40); the window "
        "leaves 1188, too little for any prompt beside it: remove a fact or unpin a message"
    )
    # A prompt too long for a window with room for a short one is still the prompt's.
    roomy = too_large(1300, 1188, FixedParts(1100, summary=544, held=500))
    assert roomy is not None and roomy.reason.startswith("the prompt with the pinned")


def test_a_reason_told_without_counts_names_the_causes_in_a_fixed_order() -> None:
    """Review RV39-N1: ordered by size, the causes told a member who may not read a
    restricted pin whether the facts and pins outweigh the summary."""
    for held, summary in ((300, 100), (100, 300)):
        ending = too_large(500, 350, FixedParts(420, summary=summary, held=held))
        assert ending is not None and ending.uncounted is not None
        assert str(held) not in ending.uncounted and str(summary) not in ending.uncounted
        assert "(the facts and pinned messages, the summary of older turns)" in (ending.uncounted)
        assert ending.uncounted.index("remove a fact") < ending.uncounted.index(
            "PARLEY_SUMMARY_MAX_OUTPUT_TOKENS"
        )


@pytest.mark.parametrize(("tokens", "fixed"), [(101, 0), (150, 120)])
def test_a_run_past_the_window_tells_its_count_to_members_who_may_read_all_it_drew_on(
    tokens: int, fixed: int
) -> None:
    """Review A2: the count holds what the build gave the run's issuers (a restricted
    reply pinned, kept server-side): told without it when not every member may read what
    the run drew on (a pin's refusal counts only what its setter may read: R3-1)."""
    ending = too_large(tokens, 100, FixedParts(fixed, held=fixed))
    assert ending is not None and f"{fixed or tokens} tokens" in ending.reason
    assert shown_ending(ending, readable_by_all=True) == ending
    shown = shown_ending(ending, readable_by_all=False)
    assert shown is not None and shown.code is ReasonCode.TOO_LARGE
    assert str(fixed or tokens) not in shown.reason
    assert "more tokens than the window leaves (100)" in shown.reason


# -- membership -------------------------------------------------------------------------


def test_stop_prompts_of_fails_the_waiting_ones_and_stops_a_run_answering_one() -> None:
    session = Session(policy=Policy.COALESCE)
    running = session.prompt("eddie")
    session.start_run()
    waiting = session.prompt("eddie")
    other = session.prompt("erin")
    ending = Ending(ReasonCode.MEMBER_REMOVED, "eddie was removed from the session")
    effects = handle(session.view(), StopPromptsOf("eddie", ending, 9))
    assert effects.finish == (Finish((waiting,), ending),)
    assert effects.stop == StopRun(ending, wait=False)
    assert effects.queue is not None and [p.id for p in effects.queue.pending()] == [other]
    assert effects.events == (
        RunFailed((waiting,), None, ReasonCode.MEMBER_REMOVED, ending.reason),
    )
    nothing = handle(session.view(), StopPromptsOf("olive", ending, 9))
    assert nothing == Effects() and running in session.running.ids  # type: ignore[union-attr]


def test_removing_a_member_or_a_new_epoch_stops_their_prompts_a_role_change_does_not() -> None:
    session = Session()
    session.prompt("eddie")
    before = Member("eddie", "editor", token_epoch="e1")
    removed = handle(session.view(), MemberUpdated("eddie", before, None, 1))
    assert removed.finish[0].ending == Ending(
        ReasonCode.MEMBER_REMOVED, "eddie was removed from the session"
    )
    readded = handle(
        session.view(), MemberUpdated("eddie", before, replace(before, token_epoch="e2"), 1)
    )
    assert readded.finish == removed.finish
    demoted = MemberUpdated("eddie", before, replace(before, role="viewer"), 1)
    assert handle(session.view(), demoted) == Effects()  # its prompt fails when it comes up
    joined = MemberUpdated("eddie", None, before, 1)
    assert handle(session.view(), joined) == Effects()


def test_an_author_who_may_no_longer_prompt_loses_the_run_answering_them() -> None:
    session = Session()
    running = session.prompt("eddie")
    session.start_run()
    waiting = session.prompt("eddie")
    before = Member("eddie", "editor", token_epoch="e1")
    session.members["erin"] = Member("erin", "viewer")
    other = MemberUpdated("erin", Member("erin", "editor"), session.members["erin"], 1)
    assert handle(session.view(), other) == Effects()  # not erin's run
    session.members["eddie"] = replace(before, role="viewer")
    effects = handle(session.view(), MemberUpdated("eddie", before, session.members["eddie"], 1))
    revoked = Ending(
        ReasonCode.FORBIDDEN, "eddie may no longer prompt: a viewer may not prompt here"
    )
    assert effects.stop == StopRun(revoked, wait=False)
    assert effects.finish == ()  # the waiting prompt fails when it comes up
    assert running in session.running.ids and waiting  # type: ignore[union-attr]


def test_an_issuer_who_may_no_longer_read_what_a_run_drew_on_loses_it() -> None:
    """Review (no confused deputy): a run that drew on a document goes no further once
    one of its issuers may no longer read it, though they may still prompt: a coalesced
    run stops for all of them (``forbidden``), and so does the owner's side-thread run;
    what others may read does not matter."""
    session = Session(policy=Policy.COALESCE)
    session.prompt("eddie")
    session.prompt("erin")
    run = session.start_run()
    assert run is not None and run.authors == ("eddie", "erin")
    vault = Readers("d1", frozenset({"eddie", "erin"}))
    prompt = ThreadTurn("p", "t", 0, "prompt", "eddie", "hi", "running", 1)
    thread = SideThread("t", "eddie", 0, "t", "open", 1, (prompt,))
    view = replace(
        session.view(),
        running_reply=ReplyState("r", (vault,)),
        threads={"t": thread},
        thread_drew_on=lambda thread_id: (vault,),
    )
    vic = session.members["vic"]
    assert handle(view, MemberUpdated("vic", vic, replace(vic, role="editor"), 1)) == Effects()
    erin = session.members["erin"]
    assert handle(view, MemberUpdated("erin", erin, erin, 1)) == Effects()  # may still read

    session.members["erin"] = replace(erin, denials=frozenset({"read:d1"}))
    effects = handle(view, MemberUpdated("erin", erin, session.members["erin"], 1))
    why = "may no longer read what this run drew on (restricted to the readers of d1)"
    assert effects.stop == StopRun(Ending(ReasonCode.FORBIDDEN, f"erin {why}"), wait=False)
    assert effects.finish == () and effects.stop_threads == ()  # the thread is eddie's

    eddie = session.members["eddie"]
    session.members["eddie"] = replace(eddie, denials=frozenset({"read:d1"}))
    effects = handle(view, MemberUpdated("eddie", eddie, session.members["eddie"], 1))
    assert effects.stop_threads == (("t", Ending(ReasonCode.FORBIDDEN, f"eddie {why}")),)


def test_a_revoked_token_stops_its_users_prompts() -> None:
    session = Session()
    prompt = session.prompt("erin")
    effects = handle(session.view(), TokenRevoked("erin", 1))
    revoked = Ending(ReasonCode.TOKEN_REVOKED, "a client token of erin was revoked")
    assert effects.finish == (Finish((prompt,), revoked),)
    session.apply(effects)
    assert session.doc.entry(prompt).status == PromptStatus.FAILED.value


def test_a_removal_or_revocation_whose_stop_never_came_ends_the_prompts_as_they_start() -> None:
    """The session loaded elsewhere between the change's write and its stop (a failover, a
    crash): the prompts sent before the change end at their run's start as the stop would
    have ended them, those sent after run (a member removed and added back, and one whose
    token was revoked, prompt on)."""
    session = Session()
    revoked, removed, readded = (session.prompt(u) for u in ("erin", "eddie", "olive"))
    changed_at = 1000 + session.last_seq  # the next prompt's time
    session.revoked_at["erin"] = changed_at
    del session.members["eddie"]
    session.members["olive"] = Member("olive", "owner", joined_at=changed_at)
    later = [session.prompt(u) for u in ("erin", "olive")]
    ran = []
    while (run := session.start_run()) is not None:
        ran += run.ids
        session.finish_run()
    assert ran == later
    ended = {p: session.doc.entry(p) for p in (revoked, removed, readded)}
    assert {p: (e.status, e.reason_code) for p, e in ended.items()} == {
        revoked: ("failed", "token_revoked"),
        removed: ("failed", "member_removed"),
        readded: ("failed", "member_removed"),
    }
    assert {(e.reason_code, e.reason) for e in ended.values()} == {
        ("token_revoked", "a client token of erin was revoked"),
        ("member_removed", "eddie was removed from the session"),
        ("member_removed", "olive was removed from the session"),
    }
    # The change was audited, not each prompt it ended.
    assert not [r for r in session.audit if r.kind == "refused"]


# -- restart ----------------------------------------------------------------------------


@pytest.mark.parametrize("cause", sorted(CUT_OFF_REASONS))
def test_a_restart_requeues_waiting_prompts_and_cuts_off_the_running_ones(
    cause: ReasonCode,
) -> None:
    before = Session()
    ran = before.prompt("eddie")
    for author in ("eddie", "erin", "eddie"):
        before.prompt(author)
    before.start_run()
    planned = [p.id for p in before.queue.pending()]
    waiting = tuple(
        WaitingPrompt(e.id, e.seq, e.author, before.doc.entry(e.id).status) for e in before.stored
    )
    after = Session(doc=before.doc, last_seq=before.last_seq)
    effects = handle(after.view(), Recovered(waiting, Policy.QUEUE, cause, 50))
    ending = Ending(cause, CUT_OFF_REASONS[cause])
    assert effects.finish == (Finish((ran,), ending),)
    reply = before.doc.entry(ran).reply_id
    assert effects.events == (RunFailed((ran,), reply, cause, ending.reason),)
    assert effects.queue is not None
    assert [p.id for p in effects.queue.pending()] == planned  # the turns clients saw
    after.apply(effects)
    assert after.doc.entry(ran).status == PromptStatus.FAILED.value
    assert after.doc.entry(str(reply)).status == OUTCOMES[cause][1].value


def test_a_restart_with_nothing_in_flight_only_rebuilds_the_queue() -> None:
    session = Session()
    prompt = session.prompt("eddie")
    waiting = (WaitingPrompt(prompt, 1, "eddie", PromptStatus.QUEUED.value),)
    effects = handle(
        session.view(), Recovered(waiting, Policy.REJECT, ReasonCode.SERVER_RESTART, 1)
    )
    assert effects.finish == () and effects.events == ()
    assert effects.queue is not None and effects.queue.policy is Policy.REJECT
    assert [p.id for p in effects.queue.pending()] == [prompt]


# -- semantic events (``semantic``) -----------------------------------------------------


def test_commands_name_their_events_and_no_change_names_none() -> None:
    session = Session()
    prompt = session.prompt("eddie")
    assert session.events == [PromptAccepted(prompt, 1, "eddie")]
    message = session.send("erin", MessageCommand("c", "hey")).entry
    assert message is not None and session.events[-1] == MessagePosted(message.id, 2, "erin")
    assert session.send("eddie", PinCommand("c", prompt, True)).events == (
        PinChanged(prompt, True, "eddie"),
    )
    assert session.send("", FactCommand("c", "k", "v"), admin=True).events == (
        FactSet("k", False, "admin"),
    )
    assert session.send("eddie", FactCommand("c", "k", None)).events == (
        FactSet("k", True, "eddie"),
    )
    assert session.send("eddie", FactCommand("c", "gone", None)).events == ()
    assert session.send("olive", PolicyCommand("c", Policy.REJECT)).events == (
        SettingsChanged({"policy": "reject"}, "olive"),
    )
    assert session.send("olive", PolicyCommand("c", Policy.REJECT)).events == ()
    assert session.send("eddie", CancelCommand("c", prompt)).events == (
        RunFailed((prompt,), None, ReasonCode.CANCELLED, "cancelled by eddie"),
    )


# -- properties across runs, membership and restarts -------------------------------------

lives = st.lists(
    st.one_of(
        st.tuples(st.just("prompt"), st.sampled_from(["olive", "eddie", "erin"])),
        st.tuples(st.just("start")),
        st.tuples(st.just("finish"), st.sampled_from([None, *ReasonCode])),
        st.tuples(st.just("remove"), st.sampled_from(["eddie", "erin"])),
        st.tuples(st.just("revoke"), st.sampled_from(["olive", "eddie", "erin"])),
        st.tuples(st.just("restart"), st.sampled_from(sorted(CUT_OFF_REASONS))),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(steps=lives, policy=st.sampled_from(list(Policy)))
def test_the_document_the_queue_and_the_run_in_flight_always_agree(
    steps: list[tuple[object, ...]], policy: Policy
) -> None:
    """Whatever runs, stops, leaves and restarts: a prompt is ``queued`` exactly while the
    queue holds it, ``running`` exactly while the run in flight answers it, and every other
    prompt is final; one event per status change a prompt reaches, none for nothing."""
    session = Session(policy=policy, limits=QueueLimits(max_pending_per_user=4))
    for step in steps:
        kind, arg = step[0], step[1] if len(step) > 1 else None
        if kind == "prompt":
            session.send(str(arg), PromptCommand("c", "q"))
        elif kind == "start":
            session.start_run()
        elif kind == "finish" and session.running is not None:
            session.finish_run(None if arg is None else Ending(ReasonCode(str(arg)), "r"))
        elif kind in ("remove", "revoke"):
            user = str(arg)
            member = session.members.pop(user, None) if kind == "remove" else None
            event: MemberUpdated | TokenRevoked = (
                MemberUpdated(user, member, None, 1) if kind == "remove" else TokenRevoked(user, 1)
            )
            effects = session.apply(handle(session.view(), event))
            if effects.stop is not None:  # the runner settles the stopped run
                session.finish_run(effects.stop.ending)
            session.members.setdefault(user, Member(user, ROLES[user]))
        elif kind == "restart":
            waiting = tuple(
                WaitingPrompt(e.id, e.seq, e.author, session.doc.entry(e.id).status)
                for e in session.stored
                if session.doc.entry(e.id).status in ("queued", "running")
            )
            session.running = None
            session.apply(
                handle(session.view(), Recovered(waiting, policy, ReasonCode(str(arg)), 1))
            )
        pending = {p.id for p in session.queue.pending()}
        running = set() if session.running is None else set(session.running.ids)
        assert (session.queue.running is None) == (session.running is None)
        for entry in session.stored:
            status = session.doc.entry(entry.id).status
            assert (status == "queued") == (entry.id in pending)
            assert (status == "running") == (entry.id in running)
    accepted = [e for e in session.events if isinstance(e, PromptAccepted)]
    ended = [
        p for e in session.events if isinstance(e, RunFailed | ReplyCompleted) for p in e.prompt_ids
    ]
    assert len(accepted) == len(session.stored)
    assert len(ended) == len(set(ended))  # a prompt ends once
    final = [
        e.id for e in session.stored if session.doc.entry(e.id).status not in ("queued", "running")
    ]
    assert sorted(ended) == sorted(final)


def test_under_coalesce_a_member_at_their_quota_fails_only_their_own_prompts() -> None:
    session = Session(policy=Policy.COALESCE)
    over, fresh = session.prompt("eddie"), session.prompt("erin")
    limits = Quotas(user_tokens_per_day=100)
    effects = handle(session.view(), RunStart(1, "r", "m", limits, {"eddie": 100, "erin": 5}))
    # Told when the quotas start over: the next UTC midnight after the start (``now_ms`` 1).
    ending = Ending(
        ReasonCode.QUOTA_EXCEEDED,
        "eddie reached their quota of 100 tokens today",
        retry_at=86_400_000,
    )
    assert effects.begin is None and effects.finish == (Finish((over,), ending),)
    assert effects.audit == (
        AuditRecord(
            "run_ended",
            "eddie",
            {
                "prompt_ids": [over],
                "reply_id": None,
                "reason_code": "quota_exceeded",
                "reason": ending.reason,
            },
        ),
    )
    assert effects.events == (
        RunFailed((over,), None, ReasonCode.QUOTA_EXCEEDED, ending.reason, 86_400_000),
    )
    session.apply(effects)
    assert session.doc.entry(over).status == PromptStatus.FAILED.value
    assert session.doc.entry(over).retry_at == 86_400_000
    assert session.start_run() == Run((PendingPrompt(fresh, 2, "erin"),))


@pytest.mark.parametrize(
    ("limits", "used"),
    [
        (Quotas(user_tokens_per_day=100), {"eddie": 100, "erin": 100}),  # every author
        (Quotas(150, 100), {"eddie": 100, "erin": 50}),  # the session
    ],
)
def test_a_run_whose_every_author_or_session_is_at_quota_starts_whole(
    limits: Quotas, used: dict[str, int]
) -> None:
    """It fails as one at the runner's quota check before the model call."""
    session = Session(policy=Policy.COALESCE)
    both = (session.prompt("eddie"), session.prompt("erin"))
    effects = handle(session.view(), RunStart(1, "r", "m", limits, used))
    assert effects.begin is not None and effects.begin.run.ids == both


# -- tool calls out as their run ends (review H1) ---------------------------------------


def _call_out(session: Session, reply: ReplyState) -> Effects:
    """Eddie's run took a tool step ``running``: its call is on its way."""
    out = ToolStepTaken(reply, ("eddie",), "deploy", "running", "arguments: {}", (), 70, "t1")
    return session.apply(handle(session.view(), out))


def test_a_call_taken_running_keeps_nothing_until_it_ends_with_its_answer() -> None:
    session = Session()
    session.prompt("eddie")
    run = session.start_run()
    assert run is not None
    reply = ReplyState(str(session.doc.entry(run.ids[0]).reply_id))
    taken = _call_out(session, reply)
    assert taken.tool_step is not None and taken.keep == ()
    assert session.doc.entry("t1").status == "running"
    done = ToolStepTaken(
        reply, ("eddie",), "deploy", "done", "arguments: {}\nresult: ok", (), 71, "t1"
    )
    effects = session.apply(handle(session.view(), done))
    assert effects.tool_step is None
    assert effects.end_steps == (
        EndToolStep("t1", "done", "eddie ran deploy: done\narguments: {}\nresult: ok"),
    )
    assert effects.keep == (KeepPrivate("t1", "tool", "arguments: {}\nresult: ok", ()),)


@pytest.mark.parametrize(
    ("reason", "status"), [(ReasonCode.CANCELLED, "cancelled"), (ReasonCode.TIMEOUT, "interrupted")]
)
def test_a_call_out_as_its_run_ends_is_cut_short_with_it(reason: ReasonCode, status: str) -> None:
    session = Session()
    session.prompt("eddie")
    run = session.start_run()
    assert run is not None
    reply = ReplyState(str(session.doc.entry(run.ids[0]).reply_id))
    _call_out(session, reply)
    effects = session.finish_run(Ending(reason, "stopped"), reply=reply)
    assert effects.end_steps == (
        EndToolStep("t1", status, f"eddie ran deploy: {status}\narguments: {{}}"),
    )
    assert session.doc.entry("t1").status == status


def test_a_run_cut_off_by_a_crash_is_audited_from_the_story_as_it_loads() -> None:
    before = Session()
    ran = before.prompt("eddie")
    before.start_run()
    reply_id = str(before.doc.entry(ran).reply_id)
    _call_out(before, ReplyState(reply_id))
    waiting = (WaitingPrompt(ran, 1, "eddie", "running"),)
    after = Session(doc=before.doc, last_seq=before.last_seq)
    cause = ReasonCode.FAILOVER
    effects = after.apply(handle(after.view(), Recovered(waiting, Policy.QUEUE, cause, 50)))
    assert [e.id for e in effects.end_steps] == ["t1"]
    assert after.doc.entry("t1").status == "interrupted"
    call, ended = effects.audit
    assert (call.kind, call.actor, ended.kind) == ("model_call", "eddie", "run_ended")
    assert call.data["tool_calls"] == [{"id": "t1", "tool": "deploy", "outcome": "interrupted"}]
    assert (call.data["prompt_ids"], call.data["reply_id"]) == ([ran], reply_id)
    assert call.data["cut_off"] == ended.data["reason_code"] == "failover"
