"""The writes the session core's effects make, inside the room's one writer's transaction.

``write_effects`` stores an ``Effects`` (``session.core.effects``): the new entry (row and
document), the final statuses, a run's start, the document change, a tool step (or the end
of one stored running), the text kept server-side and the audit records, all in the
transaction the room commits before it broadcasts the update and answers the command.
Every status change goes through the lifecycle table twice, in the row
(``StoreTx.set_entry_status``) and in the document (``SessionDocument``), so the two never
disagree. The semantic events come with the effects (the core decided them); the room
stores them in the same transaction."""

from __future__ import annotations

from collections.abc import Sequence

from parley.server.store.access_rows import PrivateItem
from parley.server.store.port import SessionTx
from parley.server.store.rows import EntryRow, claims_column
from parley.session.core import BeginRun, Effects, NewEntry, Pin, SetFact, SetPolicy
from parley.session.core.effects import DeleteThread, OpenThread, SetThreadStatus
from parley.session.entries import EntryKind
from parley.session.lifecycle import PromptStatus, check_prompt_transition
from parley.session.reasons import Ending
from parley.session.schema import SessionDocument


async def write_effects(
    tx: SessionTx,
    doc: SessionDocument,
    session_id: str,
    effects: Effects,
    now_ms: int,
    *,
    starting: BeginRun | None = None,
    inserted: str | None = None,
    new_command: bool = False,
) -> None:
    """Store ``effects`` (not the queue, nor their events: the room writes those).

    A prompt whose run starts in the write that stores it is inserted ``running``, one
    statement instead of an insert and an update: ``starting`` is that run (for the
    prompt's effects), ``inserted`` the prompt (for the run's, which move the others).
    ``new_command``: the entry's command id is surely new (``SentCommands``): its insert
    may wait for the write's last statement (``StoreTx.insert_entry``)."""
    if effects.entry is not None:
        await _store_entry(tx, doc, session_id, effects.entry, starting, new_command)
    for finish in effects.finish:
        await finish_prompts(tx, doc, finish.prompt_ids, finish.ending, now_ms)
    if effects.begin is not None:
        await _begin_run(tx, doc, effects.begin, inserted)
    change = effects.change
    if isinstance(change, Pin):
        (doc.pin if change.pinned else doc.unpin)(change.entry_id)
    elif isinstance(change, SetFact):
        doc.set_fact(change.key, change.value, change.author)
    elif isinstance(change, SetPolicy):
        await tx.set_policy(session_id, change.policy.value)
        doc.set_policy(change.policy.value)
    step = effects.tool_step
    if step is not None:
        doc.add_tool_step(
            id=step.id,
            reply_id=step.reply_id,
            author=step.author,
            tool=step.tool,
            status=step.status,
            text=step.text,
            created_at=step.created_at,
        )
    for end in effects.end_steps:
        doc.end_tool_step(end.id, status=end.status, text=end.text)
    for kept in effects.keep:
        item = PrivateItem(kept.entry_id, kept.kind, kept.text, kept.restriction)
        await tx.insert_private(session_id, item, now_ms)
    await _write_threads(tx, session_id, effects)
    for record in effects.audit:
        await tx.insert_audit(session_id, now_ms, record.kind, record.actor, dict(record.data))


async def _write_threads(tx: SessionTx, session_id: str, effects: Effects) -> None:
    """Side-thread rows: beside the session, never in its document."""
    change = effects.thread
    if isinstance(change, OpenThread):
        await tx.insert_thread(session_id, change.thread)
    elif isinstance(change, SetThreadStatus):
        await tx.set_thread_status(session_id, change.thread_id, change.status)
    elif isinstance(change, DeleteThread):
        await tx.delete_thread(session_id, change.thread_id)
    for settle in effects.thread_settle:
        await tx.set_thread_turn_status(session_id, settle)
    for turn in effects.thread_turns:
        await tx.insert_thread_turn(session_id, turn)


async def finish_prompts(
    tx: SessionTx,
    doc: SessionDocument,
    prompt_ids: Sequence[str],
    ending: Ending | None,
    now_ms: int,
) -> None:
    """Prompts reach their final status (``done`` without an ending) in the row and the
    document alike; both are checked against the lifecycle table."""
    status = PromptStatus.DONE if ending is None else ending.status
    for prompt_id in prompt_ids:
        await tx.set_entry_status(prompt_id, status, ending=ending, finished_at=now_ms)
    doc.finish_prompts(prompt_ids, ending)


async def _begin_run(
    tx: SessionTx, doc: SessionDocument, begin: BeginRun, inserted: str | None
) -> None:
    """A run's prompts become ``running`` (row and document) and its reply opens; the row
    of ``inserted`` was stored running already."""
    for prompt in begin.run.prompts:
        if prompt.id == inserted:
            continue
        await tx.set_entry_status(
            prompt.id, PromptStatus.RUNNING, reply_id=begin.reply_id, started_at=begin.created_at
        )
    doc.start_reply(
        prompt_ids=begin.run.ids,
        reply_id=begin.reply_id,
        author=begin.author,
        created_at=begin.created_at,
    )


async def _store_entry(
    tx: SessionTx,
    doc: SessionDocument,
    session_id: str,
    entry: NewEntry,
    starting: BeginRun | None,
    new_command: bool,
) -> None:
    seq = entry.seq  # the store checks it was next (only the room's writer hands them out)
    tx.claim_seq(session_id, seq)
    status, reply_id, started_at = entry.status, None, None
    if starting is not None and entry.id in starting.run.ids:
        # The lifecycle's step from queued, checked here as the row's update would have.
        check_prompt_transition(PromptStatus(status), PromptStatus.RUNNING)
        status, reply_id, started_at = (
            PromptStatus.RUNNING.value,
            starting.reply_id,
            starting.created_at,
        )
    await tx.insert_entry(
        last=new_command,
        row=EntryRow(
            id=entry.id,
            session_id=session_id,
            seq=seq,
            kind=entry.kind.value,
            author=entry.author,
            command_id=entry.command_id,
            text=entry.text,
            status=status,
            reason=None,
            reply_id=reply_id,
            created_at=entry.created_at,
            started_at=started_at,
            token_claims=claims_column(entry.link_token),
        ),
    )
    if entry.kind is EntryKind.PROMPT:
        doc.add_prompt(
            id=entry.id, seq=seq, author=entry.author, text=entry.text, created_at=entry.created_at
        )
    else:
        doc.add_message(
            id=entry.id,
            seq=seq,
            author=entry.author,
            text=entry.text,
            created_at=entry.created_at,
            source=entry.source,
        )
