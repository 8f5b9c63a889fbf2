"""Private side-threads: a member's own conversation with the model beside the session.

A side-thread belongs to the member who opened it (``owner``). Its model input is the
shared session up to its anchor, built with the owner's scope (what their own prompt there
would see), then its own turns; none of it enters the shared document, other members'
inputs, summaries or previews. Its runs do not wait in, or block, the session's queue: at
most ``ThreadLimits.runs_per_member`` of one member's run at once, one per thread; a
member's second and later only while the session runs fewer than
``ThreadLimits.max_runs_per_session`` (their first is never refused for the others'
runs, whose count no refusal tells). What the owner
shares back is posted as their message, marked as from a private thread; text derived from
what not every member may read is refused (``RestrictedShare``) unless the session's
``restricted_replies`` policy is ``shared``, chosen by the admin key or by a member who may
read it (then the sharing is audited).

``handle_thread`` judges the thread commands, ``thread_run_finished`` settles a run,
``threads_to_stop`` says whose runs stop when a member loses the right to prompt, and
``apply_to_threads`` is the committed state after a write (the room keeps it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

from parley.authz.policy import (
    Do,
    Restriction,
    Subject,
    decide,
    may_read,
    restrict,
    restriction_to_json,
)
from parley.authz.roles import Capability
from parley.authz.scope import prompt_refusal
from parley.session.core.effects import (
    Ack,
    AuditRecord,
    BeginThreadRun,
    DeleteThread,
    Effects,
    KeepPrivate,
    OpenThread,
    SetThreadStatus,
    ThreadTurnStatus,
)
from parley.session.core.state import (
    RESTRICTED_DETAILS,
    CommandEvent,
    SessionView,
    new_entry,
    require_room,
)
from parley.session.core.thread_state import (
    CLOSED,
    DONE,
    OPEN,
    RUNNING,
    SideThread,
    ThreadTurn,
    running_threads,
)
from parley.session.entries import MESSAGE_STATUS, EntryKind
from parley.session.errors import (
    Busy,
    DuplicateCommand,
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
    RestrictedShare,
    ShuttingDown,
    ThreadClosed,
    ThreadLimit,
    ThreadRunsBusy,
    TooLarge,
)
from parley.session.reasons import Ending, ReasonCode
from parley.session.thread_commands import (
    ThreadCloseCommand,
    ThreadCommand,
    ThreadOpenCommand,
    ThreadPromptCommand,
    ThreadShareCommand,
)

FROM_THREAD = "private_thread"  # the ``source`` of a message shared back from a side-thread
SUMMARY_REQUEST = (
    "Summarise this private side-thread for the other members of the session: what was "
    "asked, what was found, and what follows from it. Write it as a short message they "
    "can read on its own."
)


def handle_thread(view: SessionView, event: CommandEvent, command: ThreadCommand) -> Effects:
    """What a member's side-thread command does (the shell's ``admin`` key has no thread)."""
    if event.admin:
        raise Forbidden("side-threads belong to members; the admin reads them over REST")
    if isinstance(command, ThreadOpenCommand):
        return _open(view, event, command)
    thread = view.threads.get(command.thread_id)
    if thread is None or thread.owner != event.actor:  # another's thread is not there for them
        raise NotFound(f"no side-thread {command.thread_id!r} of yours in this session")
    if isinstance(command, ThreadPromptCommand):
        return _prompt(view, event, command, thread)
    if isinstance(command, ThreadShareCommand):
        return _share(view, event, command, thread)
    return _close(event, command, thread)


def _audit(event: CommandEvent, action: str, **data: object) -> AuditRecord:
    return AuditRecord("thread", event.actor, {"action": action, **data})


def _may_prompt(view: SessionView, actor: str) -> None:
    refusal = prompt_refusal(view.subject(actor))
    if refusal is not None:
        raise Forbidden(refusal)


def _opened(thread: SideThread) -> Ack:
    return Ack(None, (("thread_id", thread.id), ("anchor_seq", thread.anchor_seq)))


def _asked(thread: SideThread, prompt: ThreadTurn) -> Ack:
    reply_id = thread_reply_id(prompt)
    return Ack(None, (("thread_id", thread.id), ("turn_id", prompt.id), ("reply_id", reply_id)))


def thread_reply_id(prompt: ThreadTurn) -> str:
    """The id of the reply a side-thread run answering ``prompt`` writes."""
    return f"{prompt.id}-reply"


def used_in_threads(view: SessionView, actor: str, command_id: str) -> bool:
    """Whether ``actor`` opened a side-thread or asked in one under ``command_id``: the id
    is that command's, and another command under it is a conflict, after a restart too
    (the recent acks are in memory; review). A deleted thread's ids are known by the
    store's kept acks (``session.recent_acks.kept_as_ack``)."""
    for thread in view.threads.values():
        if thread.owner != actor:
            continue
        if thread.command_id == command_id:
            return True
        if any(t.kind == "prompt" and t.command_id == command_id for t in thread.turns):
            return True
    return False


def _open(view: SessionView, event: CommandEvent, command: ThreadOpenCommand) -> Effects:
    for thread in view.threads.values():  # resent (say after a reconnect): its first ack
        if thread.owner == event.actor and thread.command_id == command.id:
            if not _opened_by(view, thread, command):
                raise DuplicateCommand(command.id)  # another opening under its id
            return Effects(ack=_opened(thread))
    if used_in_threads(view, event.actor, command.id):
        raise DuplicateCommand(command.id)  # a side-thread prompt's
    _may_prompt(view, event.actor)
    limits = view.thread_limits
    owned = sum(1 for t in view.threads.values() if t.owner == event.actor)
    if owned >= limits.max_threads_per_member:
        raise ThreadLimit(f"at most {limits.max_threads_per_member} side-threads per member")
    anchor_seq = view.last_seq
    if command.anchor is not None:
        if not view.doc.has_entry(command.anchor):
            raise NotFound(f"no entry {command.anchor!r} in this session")
        anchor_seq = view.doc.entry(command.anchor).seq
    thread = SideThread(
        event.new_id,
        event.actor,
        anchor_seq,
        command.title,
        OPEN,
        event.now_ms,
        command_id=command.id,
    )
    return Effects(
        ack=_opened(thread),
        thread=OpenThread(thread),
        audit=(_audit(event, "open", thread_id=thread.id, anchor_seq=anchor_seq),),
    )


def _opened_by(view: SessionView, thread: SideThread, command: ThreadOpenCommand) -> bool:
    """Whether ``command`` asks for what opened ``thread``, as far as the thread tells: its
    title, and its anchor's number if it names one (the store's kept ack of the opening,
    kept a day, tells it exactly: ``server.runtime.commands``)."""
    if command.title != thread.title:
        return False
    anchor = command.anchor
    return anchor is None or (
        view.doc.has_entry(anchor) and view.doc.entry(anchor).seq == thread.anchor_seq
    )


def _prompt(
    view: SessionView, event: CommandEvent, command: ThreadPromptCommand, thread: SideThread
) -> Effects:
    asked = SUMMARY_REQUEST if command.summarise else command.text
    for turn in thread.turns:  # resent (say after a reconnect): its first ack, no second run
        if turn.kind == "prompt" and turn.command_id == command.id and turn.text == asked:
            return Effects(ack=_asked(thread, turn))
    if used_in_threads(view, event.actor, command.id):
        # Another prompt's id, or an opening's (review: after a restart, which empties the
        # recent acks, a reused id was acked and its new text dropped unasked).
        raise DuplicateCommand(command.id)
    if not view.accepting_prompts:
        raise ShuttingDown()
    _may_prompt(view, event.actor)
    if thread.status != OPEN:
        raise ThreadClosed(f"side-thread {thread.id!r} is closed")
    if thread.running:
        raise Busy("a reply is still being written in this side-thread; wait for it")
    limits = view.thread_limits
    if len(thread.turns) + 2 > limits.max_turns_per_thread:
        raise ThreadLimit(f"at most {limits.max_turns_per_thread} turns per side-thread")
    # A member's share first: one member prompting in every thread of theirs held all the
    # session's runs, and the others' prompts were refused for as long as the runs lasted
    # (review).
    mine = running_threads(view.threads.values(), event.actor)
    if mine >= limits.runs_per_member:
        raise ThreadRunsBusy(
            f"you have {limits.runs_per_member} side-thread replies being written in this "
            "session, your share; try again when one of them is done"
        )
    # The session's cap refuses only a member with a run of their own, and says nothing of
    # how many are the others' (review RV41-F1: a member with none was refused "4
    # side-thread replies are being written", which told them when, and how many, the
    # others asked privately; and two members held every run). So a member's first run is
    # never refused for the others' runs: a session runs at most ``max_runs_per_session``
    # plus one per other member with a run of their own.
    if mine and running_threads(view.threads.values()) >= limits.max_runs_per_session:
        raise ThreadRunsBusy(
            "this session's side-thread runs are all taken while a reply of yours is being "
            "written; try again when yours is done"
        )
    # A run folds the session's history up to its anchor anew when its thread's fold is
    # not kept, paid from its owner's read budget as a preview's build is: while it is
    # owed, no run starts (review RN-2: rotating prompts over 20 threads anchored at old
    # entries of a 20,000-entry session held 25-32 % of a core, paid by nobody).
    wait_s = view.read_wait_s(event.actor)
    if wait_s > 0:
        raise RateLimited(
            "your side-thread runs' folds of this session's history are over your read "
            f"budget; try again in {math.ceil(wait_s)} s",
            wait_s,
        )
    text = asked
    prompt = ThreadTurn(
        id=event.new_id,
        thread_id=thread.id,
        index=len(thread.turns),
        kind="prompt",
        author=event.actor,
        text=text,
        status=RUNNING,
        created_at=event.now_ms,
        summarise=command.summarise,
        command_id=command.id,
    )
    return Effects(
        ack=_asked(thread, prompt),
        thread_turns=(prompt,),
        thread_run=BeginThreadRun(thread.id, prompt.id, thread_reply_id(prompt), event.actor),
    )


def _share(
    view: SessionView, event: CommandEvent, command: ThreadShareCommand, thread: SideThread
) -> Effects:
    decision_reason = _post_refusal(view, event.actor)
    if decision_reason is not None:
        raise Forbidden(decision_reason)
    if command.text is not None:
        # Free text (an edited summary) may draw on anything in the thread, the run in
        # flight too, whose reads are not turns yet (review: text copied from a reply
        # still streaming was shared past restricted_share).
        if thread.running:
            raise Busy("a reply is still being written in this side-thread; share once it ends")
        text, restriction = command.text, thread.restriction
    else:
        picked = [thread.turn(t) for t in command.turn_ids]
        if any(t is None or t.kind != "reply" or t.status != DONE for t in picked):
            raise InvalidInput("'turn_ids' must name finished replies of this side-thread")
        replies = [t for t in picked if t is not None]
        text = "\n\n".join(t.text for t in replies)
        restriction = restrict(*(t.restriction for t in replies))
        if not may_read(view.subject(event.actor), restriction):
            # The thread shows them a placeholder now: sharing must not hand it back.
            raise Forbidden("these replies draw on material you may no longer read")
    limit = view.thread_limits.max_share_chars
    if len(text) > limit:
        raise TooLarge(f"what is shared is at most {limit} characters")
    require_room(view, text)  # into the shared document (a side-thread's own turns are not)
    audit = [_audit(event, "share", thread_id=thread.id, turn_ids=list(command.turn_ids))]
    if not view.everyone_may_read(restriction):
        if not view.shares(restriction):
            raise RestrictedShare(
                "this draws on material not every member of the session may read; "
                + view.unshared_reason(restriction)
            )
        drew_on = restriction_to_json(restriction)
        shared = {"thread_id": thread.id, "drew_on": drew_on}
        audit.append(AuditRecord("reply_shared", event.actor, shared))
    entry = new_entry(view, event, EntryKind.MESSAGE, text, MESSAGE_STATUS, FROM_THREAD)
    # Its readers are kept, as a restricted reply's are: later runs drawing on it inherit
    # them, and a model call of a member who may not read it leaves it out.
    keep = (KeepPrivate(entry.id, "message", text, restriction, shown=True),)
    return Effects(
        ack=Ack(entry.seq, (("message_id", entry.id),)),
        entry=entry,
        keep=keep if restriction else (),
        audit=tuple(audit),
    )


def _post_refusal(view: SessionView, actor: str) -> str | None:
    decision = decide(view.subject(actor), Do(Capability.POST_MESSAGE))
    return None if decision.allowed else decision.reason


def _close(event: CommandEvent, command: ThreadCloseCommand, thread: SideThread) -> Effects:
    ack = Ack(None, (("thread_id", thread.id),))
    stop = ((thread.id, Ending(ReasonCode.CANCELLED, "the side-thread was closed")),)
    stops = stop if thread.running else ()
    if command.delete:
        audit = (_audit(event, "delete", thread_id=thread.id),)
        return Effects(ack=ack, thread=DeleteThread(thread.id), stop_threads=stops, audit=audit)
    if thread.status == CLOSED:
        return Effects(ack=ack)
    audit = (_audit(event, "close", thread_id=thread.id),)
    change = SetThreadStatus(thread.id, CLOSED)
    return Effects(ack=ack, thread=change, stop_threads=stops, audit=audit)


@dataclass(frozen=True, slots=True)
class ThreadRunFinished:
    """A side-thread run ended: answered (no ``ending``) or not, with its reply's
    ``text`` written by ``author`` (the model), the ``steps`` it took (tool turns), what
    it drew on (``restriction``) and its audit records."""

    thread_id: str
    prompt_id: str
    reply_id: str
    author: str
    text: str
    ending: Ending | None
    restriction: Restriction
    steps: tuple[ThreadTurn, ...]
    audit: tuple[AuditRecord, ...]
    now_ms: int


def thread_run_finished(view: SessionView, event: ThreadRunFinished) -> Effects:
    """Settle a side-thread run: its prompt ends, its tool steps and its reply are stored
    (with what they drew on), and its audit records are written -- even when the thread
    was deleted meanwhile (then only those)."""
    thread = view.threads.get(event.thread_id)
    if thread is None or thread.turn(event.prompt_id) is None:
        return Effects(audit=event.audit)
    prompt = thread.turn(event.prompt_id)
    assert prompt is not None
    ending = event.ending
    status = DONE if ending is None else ending.status.value
    index = len(thread.turns)
    steps = tuple(replace(s, index=index + n) for n, s in enumerate(event.steps))
    reply = ThreadTurn(
        id=event.reply_id,
        thread_id=thread.id,
        index=index + len(steps),
        kind="reply",
        author=event.author,
        text=event.text,
        status=DONE if ending is None else ending.reply_status.value,
        created_at=event.now_ms,
        restriction=event.restriction,
        reason_code=None if ending is None else ending.code.value,
        summarise=prompt.summarise,
        retry_at=None if ending is None else ending.retry_at,
    )
    settle = ThreadTurnStatus(thread.id, prompt.id, status, reply.reason_code, reply.retry_at)
    return Effects(thread_settle=(settle,), thread_turns=(*steps, reply), audit=event.audit)


def turn_read_by(turn: ThreadTurn, reader: Subject | None) -> ThreadTurn:
    """``turn`` as ``reader`` may see it now: what it drew on is judged at read time, as
    the session's restricted text is (``may_read``); text they may not read (a source
    they were denied since) is shown as ``RESTRICTED_DETAILS``."""
    if not turn.restriction or may_read(reader, turn.restriction):
        return turn
    return replace(turn, text=RESTRICTED_DETAILS)


def thread_read_by(thread: SideThread, reader: Subject | None) -> SideThread:
    """``thread`` with each turn as ``reader`` may see it now (``turn_read_by``)."""
    if not any(t.restriction for t in thread.turns):
        return thread
    return replace(thread, turns=tuple(turn_read_by(t, reader) for t in thread.turns))


def threads_to_stop(
    threads: Mapping[str, SideThread], user_id: str, ending: Ending
) -> tuple[tuple[str, Ending], ...]:
    """The running side-threads of ``user_id``, each to stop with ``ending``."""
    return tuple((t.id, ending) for t in threads.values() if t.owner == user_id and t.running)


def running_thread_prompts(
    threads: Mapping[str, SideThread],
) -> Iterator[tuple[SideThread, ThreadTurn]]:
    """Each side-thread prompt a run answers now, with its thread."""
    for thread in threads.values():
        for turn in thread.turns:
            if turn.kind == "prompt" and turn.status == RUNNING:
                yield thread, turn


def cut_off_threads(
    threads: Mapping[str, SideThread], ending: Ending
) -> tuple[ThreadTurnStatus, ...]:
    """After a restart: a side-thread prompt that was running is never run again."""
    return tuple(
        ThreadTurnStatus(t.id, p.id, ending.status.value, ending.code.value)
        for t, p in running_thread_prompts(threads)
    )


def threads_changed(effects: Effects) -> set[str]:
    """The ids of the side-threads ``effects`` opens, changes or adds turns to (a deleted
    one is not among them: it has nothing left to show)."""
    changed = {t.thread_id for t in effects.thread_turns}
    changed.update(s.thread_id for s in effects.thread_settle)
    change = effects.thread
    if isinstance(change, OpenThread):
        changed.add(change.thread.id)
    elif isinstance(change, SetThreadStatus):
        changed.add(change.thread_id)
    return changed


def settled(thread: SideThread, settle: ThreadTurnStatus) -> SideThread:
    """``thread`` with the turn ``settle`` names at its new status, ``reason_code`` and
    ``retry_at`` (the rest as it was)."""
    return replace(thread, turns=tuple(_settled(t, settle) for t in thread.turns))


def _settled(turn: ThreadTurn, settle: ThreadTurnStatus) -> ThreadTurn:
    if turn.id != settle.turn_id:
        return turn
    return replace(
        turn, status=settle.status, reason_code=settle.reason_code, retry_at=settle.retry_at
    )


def apply_to_threads(threads: dict[str, SideThread], effects: Effects) -> None:
    """Bring ``threads`` (the committed side-threads) up to ``effects``, once committed."""
    change = effects.thread
    if isinstance(change, OpenThread):
        threads[change.thread.id] = change.thread
    elif isinstance(change, SetThreadStatus) and change.thread_id in threads:
        threads[change.thread_id] = replace(threads[change.thread_id], status=change.status)
    elif isinstance(change, DeleteThread):
        threads.pop(change.thread_id, None)
    for settle in effects.thread_settle:
        thread = threads.get(settle.thread_id)
        if thread is not None:
            threads[thread.id] = settled(thread, settle)
    for turn in effects.thread_turns:
        thread = threads.get(turn.thread_id)
        if thread is not None:
            threads[thread.id] = replace(thread, turns=(*thread.turns, turn))
