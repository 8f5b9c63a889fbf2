"""The rules of a run's steps, of membership changes and of a restart.

A run is started by the core (which prompts it answers is the queue's decision, under the
scheduling policy), streams text, draws on restricted material, takes tool steps, and is
finished with an ending (``session.reasons``); a member removed, or whose token was
revoked, loses their waiting prompts and the run answering one of theirs, and an issuer
who may no longer read what a run drew on loses that run (``drew_on_ending``); after a
restart the prompts the store holds as waiting queue again and those that were running
are cut off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from parley.authz.policy import Restriction, Subject, restrict
from parley.authz.scope import ContextSeen, RunScope, drawn_refusal, prompt_refusal
from parley.session.context import PROMPT_ROOM, FixedParts
from parley.session.core.effects import (
    AppendText,
    AuditRecord,
    BeginRun,
    Effects,
    EndToolStep,
    Finish,
    KeepPrivate,
    ReplyState,
    StopRun,
    ToolStep,
)
from parley.session.core.state import RESTRICTED_DETAILS, SessionView
from parley.session.core.steps import (
    ContextDrawn,
    MemberUpdated,
    Recovered,
    RunFinished,
    RunStart,
    ShownRun,
    StopPromptsOf,
    TextAppended,
    TokenRevoked,
    ToolStepTaken,
)
from parley.session.core.threads import (
    cut_off_threads,
    running_thread_prompts,
    thread_reply_id,
    threads_to_stop,
)
from parley.session.lifecycle import PromptStatus, ToolStepStatus
from parley.session.queue import OrderingQueue, PendingPrompt, Run
from parley.session.quota import issuers_over_quota, resets_at_ms, session_over_quota
from parley.session.reasons import Ending, ReasonCode

# Why a run that was in flight when its room was last lost ended (see ``Recovered``).
CUT_OFF_REASONS = {
    ReasonCode.SERVER_RESTART: "the server stopped while this prompt ran",
    ReasonCode.FAILOVER: "the node running this session stopped; another node took it over",
    ReasonCode.STORAGE_ERROR: "the database failed while this reply was written",
}
RESTRICTED_REPLY = (
    "\n[restricted: the rest of this reply draws on material not every member may read;"
    " members who may read it get it over REST]"
)
MAX_SHOWN_TOOL_CHARS = 2000
RUNNING_STEP = ToolStepStatus.RUNNING.value
FORBIDDEN_RUN = Ending(ReasonCode.FORBIDDEN, "the author may no longer prompt in this session")


def start_run(view: SessionView, event: RunStart) -> Effects:
    """Start the next run the queue plans, if its prompts may all still run
    (``start_refusal``); those that may not fail (``forbidden`` ones audited) and the
    runner asks again. So do the prompts of authors at their daily quota
    (``quota_exceeded``) when the run answers others who are not: one member's quota does
    not fail another's prompt. When every author, or the session, is at its quota the run
    starts and fails as a whole (the runner's quota check before the model call). Of the
    prompts planned for a coalesced run, those too large alone fail alone (``too_large``)
    and the runner asks again; the run answers those that fit together, the first in
    order, and the rest wait (``event.fit``, ``session.run_fit``). Nothing while the
    server shuts down or nothing waits."""
    run = view.queue.next() if view.accepting_prompts else None
    if run is None:
        return Effects()
    refused: dict[Ending, list[PendingPrompt]] = {}
    for prompt in run.prompts:
        ending = start_refusal(view, prompt)
        if ending is not None:
            refused.setdefault(ending, []).append(prompt)
    if refused:
        audit = tuple(
            AuditRecord("refused", p.author, {"action": "run", "prompt_id": p.id})
            for p in refused.get(FORBIDDEN_RUN, ())
        )
        return _drop(view, [(prompts, ending) for ending, prompts in refused.items()], audit)
    fit = event.fit
    if fit is not None and fit.planned == run.ids:
        if fit.too_large:
            dropped = [([prompt], ending) for prompt, ending in fit.too_large]
            ended = tuple(run_ended(p[0].author, [p[0].id], None, e) for p, e in dropped)
            return _drop(view, dropped, ended)
        run = Run(run.prompts[: fit.taken])
    over = _over_quota(event, run)
    if over:
        retry_at = resets_at_ms(event.now_ms)
        dropped = [
            (
                [p for p in run.prompts if p.author == author],
                Ending(ReasonCode.QUOTA_EXCEEDED, why, retry_at=retry_at),
            )
            for author, why in over.items()
        ]
        # Audited as a run that ended unanswered is (``run_audit``), with no reply.
        ended = tuple(
            run_ended(prompts[0].author, [p.id for p in prompts], None, ending)
            for prompts, ending in dropped
        )
        return _drop(view, dropped, ended)
    queue = view.queue.clone()
    queue.start(run)
    begin = BeginRun(run, event.reply_id, event.reply_author, event.now_ms)
    return Effects(begin=begin, queue=queue)


def start_refusal(view: SessionView, prompt: PendingPrompt) -> Ending | None:
    """Why a waiting prompt may not run now (None: it may). Its author was removed while
    it waited (no longer a member, or added back since: ``member_removed``), a token of
    theirs was revoked while it waited (``token_revoked``), or they may no longer prompt
    (``forbidden``). The stops that a removal and a revocation make (``member_updated``,
    ``token_revoked``) end the same prompts with the same reasons; judged again here, the
    prompts they never reached end alike: the session loaded (after a failover, a restart
    or a crash) between the change's write and its stop, which found no queue to stop.

    A prompt sent with a token from another member's invite link is judged by that token
    too, as a command sent with it is at its commit (``SessionView.token_refusal``): its
    maker removed or lowered so that they may no longer make the link, it ends
    ``token_revoked`` (nothing stops it before: raised back meanwhile, the maker makes
    the token, and the prompt, live again)."""
    subject = view.subject(prompt.author)
    if subject is None:
        return removed_ending(prompt.author)
    sent_at = view.doc.entry(prompt.id).created_at if view.doc.has_entry(prompt.id) else None
    if sent_at is not None:
        standing = view.standing(prompt.author)
        if sent_at < standing.joined_at:
            return removed_ending(prompt.author)
        if sent_at < standing.revoked_at:
            return revoked_ending(prompt.author)
    if prompt.link_token is not None:
        refusal = view.token_refusal(prompt.link_token)
        if refusal is not None:
            return Ending(ReasonCode.TOKEN_REVOKED, f"the client token it was sent with: {refusal}")
    return None if prompt_refusal(subject) is None else FORBIDDEN_RUN


def removed_ending(user_id: str) -> Ending:
    """How a prompt of a member removed ends (added back or not)."""
    return Ending(ReasonCode.MEMBER_REMOVED, f"{user_id} was removed from the session")


def revoked_ending(user_id: str) -> Ending:
    """How a prompt of a member whose token was revoked while it waited ends."""
    return Ending(ReasonCode.TOKEN_REVOKED, f"a client token of {user_id} was revoked")


def _over_quota(event: RunStart, run: Run) -> dict[str, str]:
    """The authors of ``run`` whose prompts fail at their quota before it starts: none
    unless some author is not at theirs and the session is not at its own."""
    if session_over_quota(event.quotas, sum(event.used_by.values())) is not None:
        return {}
    over = issuers_over_quota(event.quotas, event.used_by, run.authors)
    return over if len(over) < len(run.authors) else {}


def _drop(
    view: SessionView,
    dropped: list[tuple[list[PendingPrompt], Ending]],
    audit: tuple[AuditRecord, ...],
) -> Effects:
    """Fail these waiting prompts before any run answers them (the runner asks again)."""
    queue = view.queue.clone()
    for prompts, _ in dropped:
        for prompt in prompts:
            queue.remove(prompt.id)
    finish = tuple(Finish(tuple(p.id for p in prompts), ending) for prompts, ending in dropped)
    return Effects(finish=finish, queue=queue, audit=audit)


def text_appended(view: SessionView, event: TextAppended) -> Effects:
    """Reply text goes into the shared document unless the reply went private. Judged
    again at every batch: grants that changed since the run drew on restricted material (a
    member who may not read it added, a reader's grant taken, the policy set to ``private``,
    ``shared`` chosen by a member who may not read it) send the rest of a restricted reply
    private from this batch on."""
    reply = event.reply
    if reply.private:
        return Effects()
    if _goes_private(view, reply):
        return _gone_private(reply)
    return Effects(append=AppendText(reply.reply_id, event.text))


def context_drawn(view: SessionView, event: ContextDrawn) -> Effects:
    """The reply inherits what the run drew on; under ``private`` the rest of it leaves the
    shared document (marked there once) when not every member may read that."""
    reply = event.reply
    widened = replace(reply, restriction=restrict(reply.restriction, event.restriction))
    if reply.private or not _goes_private(view, widened):
        return Effects(reply=widened)
    return _gone_private(widened)


def _goes_private(view: SessionView, reply: ReplyState) -> bool:
    """A restricted reply not every member may read, unless the policy shares it
    (``shared``, chosen by the admin key or by a member who may read it)."""
    return (
        bool(reply.restriction)
        and not view.everyone_may_read(reply.restriction)
        and not view.shares(reply.restriction)
    )


def _gone_private(reply: ReplyState) -> Effects:
    """The rest of ``reply`` stays server-side; the document is marked once."""
    return Effects(
        reply=replace(reply, private=True),
        append=AppendText(reply.reply_id, RESTRICTED_REPLY),
    )


def tool_step(view: SessionView, event: ToolStepTaken) -> Effects:
    """A tool step: its detail kept server-side with the readers it inherits, shown in
    the document in full when every member may read it, else as who ran which tool. A
    call that leaves the server is taken ``running`` before it goes (its detail: the
    arguments; kept once it ends) and taken again, under the same id, with its outcome:
    the step stored running ends."""
    actor = ", ".join(event.issuers)
    restriction = restrict(event.reply.restriction, event.restriction)
    shown = f"{_step_header(actor, event.tool, event.status)}\n"
    if view.everyone_may_read(restriction):
        shown += event.detail[:MAX_SHOWN_TOOL_CHARS]
    else:
        shown += RESTRICTED_DETAILS
    kept = KeepPrivate(event.new_id, "tool", event.detail, restriction)
    if view.doc.has_entry(event.new_id):  # taken ahead, running: it ends
        return Effects(end_steps=(EndToolStep(event.new_id, event.status, shown),), keep=(kept,))
    step = ToolStep(
        id=event.new_id,
        reply_id=event.reply.reply_id,
        author=actor,
        tool=event.tool,
        status=event.status,
        text=shown,
        created_at=event.now_ms,
    )
    if event.status == ToolStepStatus.RUNNING:
        return Effects(tool_step=step)
    return Effects(tool_step=step, keep=(kept,))


def _step_header(actor: str, tool: str, status: str) -> str:
    return f"{actor} ran {tool}: {status}"


def cut_short_status(ending: Ending | None) -> ToolStepStatus:
    """How a tool call still out when its run ended is recorded: ``cancelled`` with a
    cancelled run, else ``interrupted`` (a stop, a time-out, a crash)."""
    cancelled = ending is not None and ending.status is PromptStatus.CANCELLED
    return ToolStepStatus.CANCELLED if cancelled else ToolStepStatus.INTERRUPTED


# A model call's ``cut_off`` until its run's ending names why it was cut short.
CUT_SHORT = "cut_short"


def cut_short(model_calls: list[dict[str, Any]], ending: Ending | None) -> None:
    """A run's model calls as it ends: one cut short (stopped, cancelled, timed out, its
    stream broken) takes the ending's reason code as its ``cut_off``, as a call cut off by
    a crash does (``cut_off_audit``); the tool calls noted ``running``: cut short, as
    their steps are (``cut_short_status``)."""
    status = cut_short_status(ending).value
    for model_call in model_calls:
        if model_call.get("cut_off") == CUT_SHORT and ending is not None:
            model_call["cut_off"] = ending.code.value
        for call in model_call["tool_calls"]:
            if call["outcome"] == ToolStepStatus.RUNNING:
                call["outcome"] = status


def _cut_short_steps(
    view: SessionView, reply_id: str, ending: Ending | None
) -> tuple[EndToolStep, ...]:
    """Reply ``reply_id``'s tool steps still ``running`` as its run ends: cut short."""
    status = cut_short_status(ending)
    ended = []
    for step in view.doc.tool_steps(reply_id):
        if step.status == ToolStepStatus.RUNNING:
            head, _, rest = step.content.partition("\n")
            head = head.removesuffix(f": {step.status}") + f": {status.value}"
            ended.append(EndToolStep(step.id, status.value, f"{head}\n{rest}"))
    return tuple(ended)


def finish_run(view: SessionView, event: RunFinished) -> Effects:
    """Settle a run: its prompts reach the status its ending decides. A reply that drew on
    restricted material is kept server-side with its readers, whatever the policy: under
    ``private`` the document holds a placeholder for the rest of it; under ``shared`` an
    owner let it into the shared document, and the sharing is audited (as is a reply kept
    private because the member who chose ``shared`` may not read it), but its readers
    still count for the runs that draw on it (their replies inherit them, and a webhook
    never carries them) and for model calls of members who may not read it."""
    queue = view.queue.clone()
    running = queue.running
    if running is not None and running.ids == event.run.ids:
        queue.finish(event.run.ids)
    keep: tuple[KeepPrivate, ...] = ()
    audit = event.audit
    reply = event.reply
    if reply is not None and reply.restriction:
        # Not private: the shared document shows it (``shared``, or every member may read).
        shown = not reply.private
        keep = (KeepPrivate(reply.reply_id, "reply", event.text, reply.restriction, shown),)
        drew_on = [r.to_json() for r in reply.restriction]
        if shown and view.restricted_replies != "private":
            shared = {"reply_id": reply.reply_id, "drew_on": drew_on}
            audit = (AuditRecord("reply_shared", "policy", shared), *audit)
        elif (
            not shown and view.restricted_replies == "shared" and not view.shares(reply.restriction)
        ):
            # ``shared`` was chosen by a member who may not read what it drew on.
            why = view.unshared_reason(reply.restriction)
            kept = {"reply_id": reply.reply_id, "drew_on": drew_on, "reason": why}
            audit = (AuditRecord("reply_kept_private", "policy", kept), *audit)
    replies: tuple[tuple[str, str | None], ...] = ()
    ending = event.ending
    if reply is not None and ending is None:
        # A restricted reply (one that drew on what not everyone may read) is never sent out.
        replies = ((reply.reply_id, None if reply.restriction else event.text),)
    elif reply is not None and reply.restriction and ending and ending.code in _QUOTING_REASONS:
        # Nor is a reason that may quote it (review: a provider's 400 quoting a document's
        # text went out in run.failed).
        replies = ((reply.reply_id, None),)
    finish = Finish(event.run.ids, event.ending)
    ended = () if reply is None else _cut_short_steps(view, reply.reply_id, ending)
    return Effects(
        finish=(finish,), queue=queue, keep=keep, audit=audit, replies=replies, end_steps=ended
    )


def stop_prompts_of(view: SessionView, event: StopPromptsOf) -> Effects:
    """Fail the user's waiting prompts and stop a run answering one of theirs (its runner
    settles it), and their side-thread runs, without waiting for them to stop. Nothing on
    a node that does not run the session: its queue is empty and nothing runs there."""
    user_id, ending = event.user_id, event.ending
    stop_threads = threads_to_stop(view.threads, user_id, ending)
    waiting = tuple(p.id for p in view.queue.pending() if p.author == user_id)
    stop = _stop_run_of(view, user_id, ending)
    if not waiting:
        return Effects(stop=stop, stop_threads=stop_threads)
    queue = view.queue.clone()
    for prompt_id in waiting:
        queue.remove(prompt_id)
    finish = (Finish(waiting, ending),)
    return Effects(finish=finish, queue=queue, stop=stop, stop_threads=stop_threads)


def _stop_run_of(view: SessionView, user_id: str, ending: Ending) -> StopRun | None:
    """Stop the run in flight if it answers a prompt of ``user_id`` (without waiting)."""
    running = view.running
    if running is not None and any(p.author == user_id for p in running.prompts):
        return StopRun(ending, wait=False)
    return None


def member_updated(view: SessionView, event: MemberUpdated) -> Effects:
    """A member removed (or removed and added back: a new epoch) loses their prompts; one
    who may no longer prompt (a role changed, a grant taken) loses the run answering one
    of theirs and their side-thread runs (their waiting prompts fail when they come up);
    one who may still prompt but may no longer read what such a run drew on so far loses
    it too (``unreadable_runs``)."""
    before, after = event.before, event.after
    if before is None or (after is not None and after.token_epoch == before.token_epoch):
        if before is None:
            return Effects()
        refusal = prompt_refusal(view.subject(event.user_id))
        if refusal is None:
            return unreadable_runs(view, event.user_id)
        revoked = Ending(ReasonCode.FORBIDDEN, f"{event.user_id} may no longer prompt: {refusal}")
        return Effects(
            stop=_stop_run_of(view, event.user_id, revoked),
            stop_threads=threads_to_stop(view.threads, event.user_id, revoked),
        )
    removed = removed_ending(event.user_id)
    return stop_prompts_of(view, StopPromptsOf(event.user_id, removed, event.now_ms))


def unreadable_runs(view: SessionView, user_id: str) -> Effects:
    """Stop the runs in flight that answer ``user_id`` (the session's run, their
    side-thread runs) whose issuers may no longer all read what the run drew on so far:
    its next model call or tool call would carry it on their behalf."""
    stop: StopRun | None = None
    running, reply = view.running, view.running_reply
    if running is not None and reply is not None and user_id in running.authors:
        ending = drew_on_ending(view.subject, running.authors, reply.restriction)
        stop = None if ending is None else StopRun(ending, wait=False)
    stop_threads = []
    for thread in view.threads.values():
        if thread.owner == user_id and thread.running:
            ending = drew_on_ending(view.subject, (user_id,), view.thread_drew_on(thread.id))
            if ending is not None:
                stop_threads.append((thread.id, ending))
    return Effects(stop=stop, stop_threads=tuple(stop_threads))


def drew_on_ending(
    subject: Callable[[str], Subject | None], issuers: Iterable[str], restriction: Restriction
) -> Ending | None:
    """How a run answering ``issuers`` ends when they may no longer all read what it drew
    on (``restriction``), judged on them as they are now (``subject``); None: it may go
    on. The one rule of a session run and a side-thread run, asked when a member's grants
    change and again before each of a run's model and tool calls."""
    refusal = drawn_refusal([(u, subject(u)) for u in issuers], restriction)
    return None if refusal is None else Ending(ReasonCode.FORBIDDEN, refusal)


def token_revoked(view: SessionView, event: TokenRevoked) -> Effects:
    revoked = revoked_ending(event.user_id)
    return stop_prompts_of(view, StopPromptsOf(event.user_id, revoked, event.now_ms))


def recovered(view: SessionView, event: Recovered) -> Effects:
    """The queue as the store holds it (in the turn order clients last saw); a prompt that
    was running is never run again (it would be answered twice): it is cut off, with the
    tool calls its run had out, and its run is audited from what the store holds
    (``cut_off_audit``)."""
    queued = PromptStatus.QUEUED.value
    queue = OrderingQueue(
        view.queue.limits,
        [
            PendingPrompt(p.id, p.seq, p.author, p.link_token)
            for p in event.waiting
            if p.status == queued
        ],
        event.policy,
        rotation=[item.author for item in view.doc.queued()],
    )
    cut_off = tuple(p.id for p in event.waiting if p.status == PromptStatus.RUNNING.value)
    ending = Ending(event.cut_off, CUT_OFF_REASONS[event.cut_off])
    settle = cut_off_threads(view.threads, ending)
    audit = cut_off_thread_audit(view, ending, event.shown_runs)
    if not cut_off:
        return Effects(queue=queue, thread_settle=settle, audit=audit)
    ended: tuple[EndToolStep, ...] = ()
    for reply_id, prompt_ids in cut_off_runs(view, cut_off).items():
        if reply_id is not None:
            ended += _cut_short_steps(view, reply_id, ending)
            audit += cut_off_audit(view, prompt_ids, reply_id, ending)
    return Effects(
        finish=(Finish(cut_off, ending),),
        queue=queue,
        thread_settle=settle,
        end_steps=ended,
        audit=audit,
    )


def cut_off_runs(view: SessionView, prompt_ids: Sequence[str]) -> dict[str | None, list[str]]:
    """Prompts cut off by a crash, by the reply of their run (several prompts: a coalesced
    run; None: a run that had no reply yet)."""
    runs: dict[str | None, list[str]] = {}
    for prompt_id in prompt_ids:
        reply_id = view.doc.entry(prompt_id).reply_id if view.doc.has_entry(prompt_id) else None
        runs.setdefault(reply_id, []).append(prompt_id)
    return runs


def cut_off_audit(
    view: SessionView, prompt_ids: list[str], reply_id: str, ending: Ending
) -> tuple[AuditRecord, AuditRecord]:
    """The audit of a run cut off by a crash, written as its session is loaded again: its
    ``model_call`` record from what the store holds (its prompts, its reply, its tool
    steps, each ``interrupted`` that was out; ``cut_off``: why), with nulls for what only
    the node that ran it knew (roles, scope, context, tokens, timings), and its
    ``run_ended`` record."""
    prompts = [view.doc.entry(p) for p in prompt_ids]
    issuers = list(dict.fromkeys(p.author for p in prompts))
    steps = [(step.id, step.tool, step.status) for step in view.doc.tool_steps(reply_id)]
    calls = _cut_off_calls(steps, ending)
    return _cut_off_records(prompt_ids, reply_id, issuers, prompts[-1].started_at, calls, ending)


def _cut_off_calls(
    steps: Iterable[tuple[str, str | None, str]], ending: Ending
) -> list[dict[str, Any]]:
    """The ``tool_calls`` of a cut-off run's record: its steps (id, tool, status), each
    still out ``interrupted``."""
    interrupted = cut_short_status(ending).value
    return [
        {"id": id_, "tool": tool, "outcome": interrupted if status == RUNNING_STEP else status}
        for id_, tool, status in steps
    ]


def cut_off_thread_audit(
    view: SessionView, ending: Ending, shown_runs: Mapping[str, ShownRun]
) -> tuple[AuditRecord, ...]:
    """The audit of the side-thread runs a crash cut off, as ``cut_off_audit``'s of a
    session run: each one's ``model_call`` record (with its ``thread_id``; ``started_at``
    null: a side-thread run's times are stored with its end, which never came; its tool
    calls as its thread's stored document shows them, ``shown_runs``, else null: not
    known) and its ``run_ended`` record."""
    audit: tuple[AuditRecord, ...] = ()
    for thread, prompt in running_thread_prompts(view.threads):
        reply_id = thread_reply_id(prompt)
        shown = shown_runs.get(prompt.id)
        calls = None if shown is None else _cut_off_calls(shown.tool_steps, ending)
        audit += _cut_off_records(
            [prompt.id], reply_id, [prompt.author], None, calls, ending, thread_id=thread.id
        )
    return audit


def _cut_off_records(
    prompt_ids: list[str],
    reply_id: str,
    issuers: list[str],
    started_at: int | None,
    tool_calls: list[dict[str, Any]] | None,
    ending: Ending,
    *,
    thread_id: str | None = None,
) -> tuple[AuditRecord, AuditRecord]:
    """The ``model_call`` and ``run_ended`` records of a run a crash cut off, with nulls
    for what only the node that ran it knew (``thread_id``: a side-thread's run)."""
    data: dict[str, Any] = {} if thread_id is None else {"thread_id": thread_id}
    data |= {
        "prompt_ids": prompt_ids,
        "reply_id": reply_id,
        "issuers": [{"user_id": user_id, "role": None} for user_id in issuers],
        "capabilities": None,
        "tools_offered": None,
        "context_included": None,
        "context_summary": None,
        "context_withheld": None,
        "step": None,
        "started_at": started_at,
        "ms": None,
        "drew_on": None,
        "input_tokens": None,
        "output_tokens": None,
        "tool_calls": tool_calls,
        "cut_off": ending.code.value,
    }
    record = AuditRecord("model_call", issuers[0], data)
    return record, run_ended(issuers[0], prompt_ids, reply_id, ending)


def run_audit_base(run: Run, reply_id: str, scope: RunScope, seen: ContextSeen) -> dict[str, Any]:
    """What every audit record of a run says of it: its prompts and reply, its issuers
    with their roles, the capabilities and tools its scope offered, and what its context
    included (the summary it was given, if any) and withheld."""
    return {
        "prompt_ids": list(run.ids),
        "reply_id": reply_id,
        "issuers": [{"user_id": s.user_id, "role": s.role} for s in scope.issuers],
        "capabilities": sorted(scope.capabilities),
        "tools_offered": [t.spec.name for t in scope.tools],
        "context_included": seen.included,
        "context_summary": seen.summary,
        "context_withheld": seen.withheld,
    }


# Reasons whose text comes from outside Parley (a model provider's error, an exception's):
# they may quote the model's input.
_QUOTING_REASONS = frozenset({ReasonCode.PROVIDER_ERROR, ReasonCode.INTERNAL_ERROR})
WITHHELD_REASON = (
    "the model call failed; its details are withheld, as the call drew on material not "
    "every member may read (the server's log has them)"
)
WITHHELD_TOOL = "(a tool it may not name)"


def shown_ending(ending: Ending | None, readable_by_all: bool) -> Ending | None:
    """``ending`` as members, webhooks and the audit log are told it. When the run drew on
    what not every member may read, a reason that may quote the model's input is withheld
    (review: a provider's 400 quoting a restricted document reached a viewer), and one
    that counts its tokens is told without the counts (review A2: "the next model call
    needs N tokens" gave a restricted tool result's size, as a pin's refusal did, A2-1)."""
    if ending is None or readable_by_all:
        return ending
    if ending.code in _QUOTING_REASONS:
        return replace(ending, reason=WITHHELD_REASON, uncounted=None)
    if ending.uncounted is not None:
        return replace(ending, reason=ending.uncounted, uncounted=None)
    return ending


def shown_tool_name(name: str, readable_by_all: bool) -> str:
    """The name of a tool call refused to a run, as the document and the audit log show
    it: the model chose it, so it is withheld when the run drew on what not every member
    may read (it could spell out what it read)."""
    return name[:64] if readable_by_all else WITHHELD_TOOL


def run_audit(
    base: dict[str, Any],
    model_calls: list[dict[str, Any]],
    refusals: list[dict[str, Any]],
    ended: Ending | None,
) -> tuple[AuditRecord, ...]:
    """A run's audit records: one per model call (with ``base``: the run's issuers, scope
    and context), one per refused tool call, one for a run that ended unanswered."""
    actor = base["issuers"][0]["user_id"]
    records = [AuditRecord("model_call", actor, {**base, **call}) for call in model_calls]
    records += [AuditRecord("tool_refused", actor, refusal) for refusal in refusals]
    if ended is not None:
        records.append(run_ended(actor, base["prompt_ids"], base["reply_id"], ended))
    return tuple(records)


def run_ended(
    actor: str, prompt_ids: list[str], reply_id: str | None, ending: Ending
) -> AuditRecord:
    """The audit record of prompts a run ended unanswered (``reply_id`` None: no run
    started for them)."""
    data = {
        "prompt_ids": prompt_ids,
        "reply_id": reply_id,
        "reason_code": ending.code.value,
        "reason": ending.reason,
    }
    return AuditRecord("run_ended", actor, data)


def too_large(tokens: int, budget: int, fixed: FixedParts | None = None) -> Ending | None:
    """Pins, facts, the summary, the tools' definitions and the prompts overflow the
    window: no call can fit. ``fixed``: what the call carries whatever it answers, by
    cause; past the window alone, the ending names the causes, largest first, and what
    each one's remedy is (review RV38-F1: a summary that filled the window was blamed on
    facts and pins the session did not have)."""
    if tokens <= budget:
        return None
    if fixed is not None and fixed.total + PROMPT_ROOM > budget:
        # Past the window alone, or leaving it too little for a prompt of a few words
        # (review RV39-F1: a one-character prompt was refused with the prompt blamed).
        present = [(name, n) for name, n in _fixed_causes(fixed) if n > 0]
        causes = sorted(present, key=lambda c: -c[1])
        counted = ", ".join(f"{name} {n}" for name, n in causes)
        said = "what every call carries needs"
        left = "" if fixed.total > budget else ", too little for any prompt beside it"
        return Ending(
            ReasonCode.TOO_LARGE,
            f"{said} {fixed.total} tokens before any prompt"
            f"{f' ({counted})' if counted else ''}; the window leaves {budget}{left}: "
            f"{_remedies(name for name, _ in causes)}",
            # In a fixed order: the order by size would tell how restricted text weighs
            # against the summary (review RV39-N1).
            uncounted=f"{said} more tokens than the window leaves ({budget}){left} before "
            f"any prompt ({', '.join(_named(name for name, _ in present))}): "
            f"{_remedies(name for name, _ in present)}",
        )
    said = "the prompt with the pinned messages, facts and tool definitions needs"
    return Ending(
        ReasonCode.TOO_LARGE,
        f"{said} {tokens} tokens; the window leaves {budget}",
        uncounted=f"{said} more tokens than the window leaves ({budget})",
    )


_INSTRUCTIONS = "the server's instructions"
_FACTS_PINS = "the facts and pinned messages"
_SUMMARY = "the summary of older turns"
_TOOLS = "the tool definitions"
_REMEDIES = {
    _FACTS_PINS: "remove a fact or unpin a message first",
    _SUMMARY: "an operator may lower PARLEY_SUMMARY_MAX_OUTPUT_TOKENS (the summary is held "
    "to it) or choose a model with a larger window",
    _TOOLS: "an admin may grant fewer tools or an operator choose a model with a larger window",
    _INSTRUCTIONS: "an operator may choose a model with a larger window",
}


def _named(causes: Iterable[str]) -> list[str]:
    return list(causes) or [_INSTRUCTIONS]


def _remedies(causes: Iterable[str]) -> str:
    return "; ".join(_REMEDIES[name] for name in _named(causes))


def _fixed_causes(fixed: FixedParts) -> tuple[tuple[str, int], ...]:
    return ((_FACTS_PINS, fixed.held), (_SUMMARY, fixed.summary), (_TOOLS, fixed.tools))
