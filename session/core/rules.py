"""``handle(view, event) -> Effects``: every rule a session command is judged by, and
the entry to the rules of a run's steps, membership changes and a restart (``runs``).

Pure: no I/O, no clock (``now_ms`` comes with the event), no randomness (``new_id`` too).
Authorisation is decided here, with ``authz.policy.decide`` on the member as of now, so
every door (a socket, a command forwarded from another node, REST) applies one rule; the
queue's rules are the ``OrderingQueue``'s, applied to a copy that the effects carry. The
semantic events of what was decided come with the effects (``semantic.events_of``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from parley.authz.policy import Cancel, Do, decide
from parley.authz.roles import Capability
from parley.session.attribution import Fact
from parley.session.commands import (
    CancelCommand,
    FactCommand,
    MessageCommand,
    PinCommand,
    PolicyCommand,
    PromptCommand,
    check_fact,
)
from parley.session.core import runs, threads
from parley.session.core.effects import (
    Ack,
    AuditRecord,
    Effects,
    Finish,
    Pin,
    SetFact,
    SetPolicy,
    StopRun,
    refused,
)
from parley.session.core.semantic import events_of
from parley.session.core.state import (
    CommandEvent,
    SessionView,
    new_entry,
    require_context_room,
    require_room,
)
from parley.session.core.steps import (
    ContextDrawn,
    MemberUpdated,
    Recovered,
    RunFinished,
    RunStart,
    StopPromptsOf,
    TextAppended,
    TokenRevoked,
    ToolStepTaken,
)
from parley.session.entries import MESSAGE_STATUS, Entry, EntryKind
from parley.session.errors import (
    Conflict,
    DuplicateCommand,
    Forbidden,
    NotFound,
    ParleyError,
    RestrictedShare,
    ShuttingDown,
    TooLarge,
    Unauthenticated,
)
from parley.session.lifecycle import PromptStatus, ReplyStatus, ToolStepStatus
from parley.session.queue import PendingPrompt
from parley.session.reasons import Ending, ReasonCode, cancelled_by
from parley.session.thread_commands import (
    ThreadCloseCommand,
    ThreadCommand,
    ThreadOpenCommand,
    ThreadPromptCommand,
    ThreadShareCommand,
)

Event = (
    CommandEvent
    | RunStart
    | TextAppended
    | ContextDrawn
    | ToolStepTaken
    | RunFinished
    | StopPromptsOf
    | MemberUpdated
    | TokenRevoked
    | Recovered
    | threads.ThreadRunFinished
)

_THREAD_COMMANDS = (ThreadOpenCommand, ThreadPromptCommand, ThreadShareCommand, ThreadCloseCommand)


def handle(view: SessionView, event: Event, *, with_events: bool = True) -> Effects:
    """What ``event`` does to the session in ``view``: the effects to carry out, or a
    refusal (``Effects.error``, with the audit record of a refused authorisation).
    ``with_events`` False: without the semantic events (a judgement at the door, which
    the writer makes again before anything is stored)."""
    try:
        effects = _handle(view, event) if isinstance(event, CommandEvent) else _step(view, event)
    except ParleyError as exc:  # the queue's and the document's own refusals
        return refused(exc)
    if effects.error is not None or not effects.writes or not with_events:
        return effects
    actor = event.actor if isinstance(event, CommandEvent) else ""
    return replace(effects, events=events_of(view.doc, effects, actor))


def _step(view: SessionView, event: Event) -> Effects:
    rule: Callable[[SessionView, Any], Effects] = _STEPS[type(event)]
    return rule(view, event)


_STEPS: dict[type, Callable[[SessionView, Any], Effects]] = {
    RunStart: runs.start_run,
    TextAppended: runs.text_appended,
    ContextDrawn: runs.context_drawn,
    ToolStepTaken: runs.tool_step,
    RunFinished: runs.finish_run,
    StopPromptsOf: runs.stop_prompts_of,
    MemberUpdated: runs.member_updated,
    TokenRevoked: runs.token_revoked,
    Recovered: runs.recovered,
    threads.ThreadRunFinished: threads.thread_run_finished,
}


def _handle(view: SessionView, event: CommandEvent) -> Effects:
    command = event.command
    token_refused = None if event.token is None else view.token_refusal(event.token)
    if token_refused is not None:
        # Judged where it is stored, not at the door alone (review of RG-2: a message let
        # in with a token revoked before it was stored was stored, after the 204; one of a
        # link's token, after its maker's removal).
        return _refusal(event, token_refused, Unauthenticated)
    if isinstance(command, _THREAD_COMMANDS):
        # A member's, as their routes are (a close or a delete read no capability: review
        # of RG-2, one judged after its owner's removal was stored after ``member_left``).
        refused = _authorized(view, event, Capability.READ_SESSION)
        return refused or _thread(view, event, command)
    if threads.used_in_threads(view, event.actor, command.id):
        raise DuplicateCommand(command.id)  # a side-thread command's id
    if isinstance(command, PromptCommand):
        return _authorized(view, event, Capability.PROMPT) or _prompt(view, event, command)
    if isinstance(command, MessageCommand):
        return _authorized(view, event, Capability.POST_MESSAGE) or _message(view, event, command)
    if isinstance(command, PinCommand):
        return _authorized(view, event, Capability.PIN) or _pin(view, event, command)
    if isinstance(command, FactCommand):
        refused = _authorized(view, event, Capability.PIN, "facts take the 'pin' capability")
        return refused or _fact(view, event, command)
    if isinstance(command, PolicyCommand):
        return _authorized(view, event, Capability.MANAGE_SESSION) or _policy(view, event, command)
    return _cancel(view, event, command)


def _thread(view: SessionView, event: CommandEvent, command: ThreadCommand) -> Effects:
    """A side-thread command, its member's refusal (no ``prompt``, no ``post_message``,
    replies they may no longer read) audited as the session's own commands' are (review
    RV40-F4: answered ``forbidden`` unaudited). The record names the command and the reason,
    never the thread's text. ``restricted_share`` is the session's policy, not a refusal
    of the member's rights."""
    try:
        return threads.handle_thread(view, event, command)
    except RestrictedShare:
        raise
    except Forbidden as exc:
        if event.admin:
            raise  # the admin key has no side-thread to be refused
        return _refusal(event, exc.message)


def _refusal(event: CommandEvent, reason: str, error: type[ParleyError] = Forbidden) -> Effects:
    """A refused authorisation: answered ``error`` (``forbidden``) with its reason, and
    audited."""
    what = f"command {type(event.command).__name__}"
    record = AuditRecord("refused", event.actor, {"action": what, "reason": reason})
    return refused(error(reason), record)


def _authorized(
    view: SessionView, event: CommandEvent, capability: Capability, note: str = ""
) -> Effects | None:
    """None when ``event.actor`` may use ``capability`` now, else the refusal (its reason
    followed by ``note``, where the capability's name does not say what was refused)."""
    if event.admin:
        return None
    decision = decide(view.subject(event.actor), Do(capability))
    if decision.allowed:
        return None
    return _refusal(event, f"{decision.reason} ({note})" if note else decision.reason)


def _prompt(view: SessionView, event: CommandEvent, command: PromptCommand) -> Effects:
    if not view.accepting_prompts:
        raise ShuttingDown()
    require_room(view, command.text)  # before the queue's refusals: waiting will not help
    queue = view.queue.clone()
    queue.admit(event.actor)
    link = event.token if event.token is not None and event.token.made_by else None
    entry = new_entry(view, event, EntryKind.PROMPT, command.text, PromptStatus.QUEUED.value)
    entry = replace(entry, link_token=link)
    pushed = queue.push(PendingPrompt(entry.id, entry.seq, entry.author, link))
    superseded = Ending(ReasonCode.SUPERSEDED, f"superseded by a newer prompt from {event.actor}")
    return Effects(
        ack=Ack(entry.seq, (("prompt_id", entry.id),)),
        entry=entry,
        finish=(Finish(tuple(p.id for p in pushed.superseded), superseded),)
        if pushed.superseded
        else (),
        queue=queue,
        stop=StopRun(superseded, wait=False) if pushed.interrupt_running else None,
        wake_runner=True,
    )


def _message(view: SessionView, event: CommandEvent, command: MessageCommand) -> Effects:
    require_room(view, command.text)
    entry = new_entry(view, event, EntryKind.MESSAGE, command.text, MESSAGE_STATUS)
    return Effects(ack=Ack(entry.seq, (("message_id", entry.id),)), entry=entry)


def _pin(view: SessionView, event: CommandEvent, command: PinCommand) -> Effects:
    entry_id = command.entry_id
    if not view.doc.has_entry(entry_id):
        raise NotFound(f"no entry {entry_id!r} in this session")
    done = Effects(ack=Ack(None, (("entry_id", entry_id),)))
    pinned = entry_id in view.doc.pinned()
    if pinned == command.pinned:
        return done
    if command.pinned and _being_written(view.doc.entry(entry_id)):
        # Judged by its text now, it would pass the pins' share once done (review I2-4).
        seq = view.doc.entry(entry_id).seq
        raise Conflict(f"message #{seq} is still being written; pin it once it is done")
    if command.pinned and len(view.doc.pins) >= view.limits.max_pins:
        raise TooLarge(f"at most {view.limits.max_pins} pins per session")
    if command.pinned:
        require_room(view)  # an unpin is bounded by the pins there are: it stays possible
        what = f"pinning message #{view.doc.entry(entry_id).seq}"
        pins = [*view.doc.pinned(), entry_id]
        require_context_room(view, event, what, view.doc.facts_with_authors(), pins)
    return Effects(ack=done.ack, change=Pin(entry_id, command.pinned))


def _being_written(entry: Entry) -> bool:
    """Whether ``entry``'s text may still grow: a reply streaming, a tool step running."""
    return (entry.kind, entry.status) in (
        (EntryKind.REPLY, ReplyStatus.STREAMING),
        (EntryKind.TOOL, ToolStepStatus.RUNNING),
    )


def _fact(view: SessionView, event: CommandEvent, command: FactCommand) -> Effects:
    key, value = command.key, command.value
    check_fact(key, value)
    done = Effects(ack=Ack(None, (("key", key),)))
    if value is None and key not in view.doc.facts:
        return done  # nothing to remove: no write, no event
    adding = value is not None and key not in view.doc.facts
    if adding and len(view.doc.facts) >= view.limits.max_facts:
        raise TooLarge(f"at most {view.limits.max_facts} facts per session")
    if value is not None:
        require_room(view, key + value)  # a removal is bounded by the facts there are
        facts = {**view.doc.facts_with_authors(), key: Fact(value, event.actor)}
        what = f"setting the fact {key!r}"
        require_context_room(view, event, what, facts, view.doc.pinned())
    return Effects(ack=done.ack, change=SetFact(key, value, event.actor))


def _policy(view: SessionView, event: CommandEvent, command: PolicyCommand) -> Effects:
    before = view.queue.policy
    require_room(view)  # each setting leaves bytes in the document's history
    queue = view.queue.clone()
    queue.set_policy(command.policy)
    audit: tuple[AuditRecord, ...] = ()
    if before is not command.policy and not event.admin:  # the REST door audits its own
        change = {"from": before.value, "to": command.policy.value}
        audit = (AuditRecord("policy", event.actor, {"policy": change}),)
    return Effects(
        ack=Ack(None, (("policy", command.policy.value),)),
        change=SetPolicy(command.policy),
        queue=queue,
        audit=audit,
        wake_runner=True,
    )


def _cancel(view: SessionView, event: CommandEvent, command: CancelCommand) -> Effects:
    """Cancel a waiting prompt (it ends ``cancelled``), or stop the run answering it, if
    the actor may cancel the prompt's author's prompts -- and, for a run that answers
    several members' prompts (``coalesce``), the others' too."""
    user_id, prompt_id = event.actor, command.prompt_id
    subject = view.subject(user_id)
    if not event.admin and not (read := decide(subject, Do(Capability.READ_SESSION))).allowed:
        return _refusal(event, read.reason)
    # Whether they may cancel at all comes before what the session holds, as for every
    # command (review: a viewer's cancel of an unknown id was answered not_found).
    if not event.admin and not decide(subject, Cancel(user_id)).allowed:
        return _refusal(event, f"{user_id} may not cancel prompts")
    doc = view.doc
    if not doc.has_entry(prompt_id) or doc.entry(prompt_id).kind is not EntryKind.PROMPT:
        raise NotFound(f"no prompt {prompt_id!r} in this session")
    entry = doc.entry(prompt_id)
    if not event.admin and not (mine := decide(subject, Cancel(entry.author))).allowed:
        return _refusal(event, mine.reason)
    cancelled = cancelled_by(user_id)
    done = Ack(entry.seq, (("prompt_id", prompt_id),))
    if entry.reason_code == ReasonCode.CANCELLED.value:
        return Effects(ack=done)  # already as asked (a cancel resent after a restart, say)
    if view.queue.is_pending(prompt_id):
        queue = view.queue.clone()
        queue.remove(prompt_id)
        return Effects(ack=done, finish=(Finish((prompt_id,), cancelled),), queue=queue)
    running = view.running
    if running is None or prompt_id not in running.ids:
        raise Conflict(f"prompt {prompt_id!r} is {entry.status}; it can no longer be cancelled")
    others = [p.author for p in running.prompts if p.author != user_id]
    if others and not event.admin and not decide(subject, Cancel(others[0])).allowed:
        raise Forbidden("the running reply also answers other members' prompts")
    return Effects(ack=done, stop=StopRun(cancelled, wait=True))
