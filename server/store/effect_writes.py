"""The writes the session core's effects make, inside the room's one writer's transaction.

``write_effects`` stores an ``Effects`` (``session.core.effects``): the new entry (row and
document), the final statuses, the document change and the audit records, all in the
transaction the room commits before it broadcasts the update and answers the command. It
returns the semantic events of what it wrote (``session.events``), which the room stores
in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from server.store.access import insert_audit
from server.store.sessions import EntryRow, StoreTx
from session.core import Effects, NewEntry, Pin, SetFact, SetPolicy
from session.errors import Unavailable
from session.events import (
    FactSet,
    MessagePosted,
    PinChanged,
    PromptAccepted,
    ReplyCompleted,
    RunFailed,
    SessionEvent,
    SettingsChanged,
)
from session.lifecycle import PromptStatus
from session.reasons import Ending
from session.schema import EntryKind, SessionDocument


class SequenceMoved(Unavailable):
    """The store handed out another sequence number than the core allotted: the room
    follows ``last_seq`` (the store's), and the sender sends the command again."""

    def __init__(self, last_seq: int) -> None:
        super().__init__("the session's sequence numbers moved; send it again")
        self.last_seq = last_seq


async def write_effects(
    tx: StoreTx,
    doc: SessionDocument,
    session_id: str,
    effects: Effects,
    now_ms: int,
    actor: str,
) -> list[SessionEvent]:
    """Store ``effects`` (not the queue: the room swaps it in on commit) made by ``actor``
    (``""``: the admin API); returns their events."""
    events: list[SessionEvent] = []
    by = actor or "admin"
    if effects.entry is not None:
        events.append(await _store_entry(tx, doc, session_id, effects.entry))
    for finish in effects.finish:
        events += await finish_prompts(tx, doc, finish.prompt_ids, finish.ending, now_ms)
    change = effects.change
    if isinstance(change, Pin):
        if doc.pin(change.entry_id) if change.pinned else doc.unpin(change.entry_id):
            events.append(PinChanged(change.entry_id, change.pinned, by))
    elif isinstance(change, SetFact):
        if change.value is not None or change.key in doc.facts:
            events.append(FactSet(change.key, change.value is None, by))
        doc.set_fact(change.key, change.value, change.author)
    elif isinstance(change, SetPolicy):
        if doc.meta.get("policy") != change.policy.value:
            events.append(SettingsChanged({"policy": change.policy.value}, by))
        await tx.set_policy(session_id, change.policy.value)
        doc.set_policy(change.policy.value)
    for record in effects.audit:
        await insert_audit(
            tx.connection, session_id, now_ms, record.kind, record.actor, dict(record.data)
        )
    return events


async def finish_prompts(
    tx: StoreTx,
    doc: SessionDocument,
    prompt_ids: Sequence[str],
    ending: Ending | None,
    now_ms: int,
) -> list[SessionEvent]:
    """Prompts reach their final status (``done`` without an ending) in the row and the
    document alike; both are checked against the lifecycle table. Returns one event per
    reply (``reply_completed`` or ``run_failed``; prompts that never ran share one)."""
    status = PromptStatus.DONE if ending is None else ending.status
    by_reply: dict[str | None, list[str]] = {}
    for prompt_id in prompt_ids:
        await tx.set_entry_status(prompt_id, status, ending=ending, finished_at=now_ms)
        by_reply.setdefault(doc.entry(prompt_id).reply_id, []).append(prompt_id)
    doc.finish_prompts(prompt_ids, ending)
    if ending is not None:
        return [RunFailed.of(tuple(ids), reply, ending) for reply, ids in by_reply.items()]
    return [ReplyCompleted(reply, tuple(ids)) for reply, ids in by_reply.items() if reply]


async def _store_entry(
    tx: StoreTx, doc: SessionDocument, session_id: str, entry: NewEntry
) -> PromptAccepted | MessagePosted:
    seq = await tx.next_seq(session_id)
    if seq != entry.seq:  # only the room's writer hands them out: nothing else should
        raise SequenceMoved(seq - 1)
    await tx.insert_entry(
        EntryRow(
            id=entry.id,
            session_id=session_id,
            seq=seq,
            kind=entry.kind.value,
            author=entry.author,
            command_id=entry.command_id,
            text=entry.text,
            status=entry.status,
            reason=None,
            reply_id=None,
            created_at=entry.created_at,
        )
    )
    add = doc.add_prompt if entry.kind is EntryKind.PROMPT else doc.add_message
    add(id=entry.id, seq=seq, author=entry.author, text=entry.text, created_at=entry.created_at)
    if entry.kind is EntryKind.PROMPT:
        return PromptAccepted(entry.id, seq, entry.author)
    return MessagePosted(entry.id, seq, entry.author)
