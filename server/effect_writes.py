"""The writes the session core's effects make, inside the room's one writer's transaction.

``write_effects`` stores an ``Effects`` (``session.core.effects``): the new entry (row and
document), the final statuses, the document change and the audit records, all in the
transaction the room commits before it broadcasts the update and answers the command.
"""

from __future__ import annotations

from collections.abc import Sequence

from server.access_store import insert_audit
from server.store import EntryRow, StoreTx
from session.core import Effects, NewEntry, Pin, SetFact, SetPolicy
from session.errors import Unavailable
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
    tx: StoreTx, doc: SessionDocument, session_id: str, effects: Effects, now_ms: int
) -> None:
    """Store ``effects`` (not the queue: the room swaps it in on commit)."""
    if effects.entry is not None:
        await _store_entry(tx, doc, session_id, effects.entry)
    for finish in effects.finish:
        await finish_prompts(tx, doc, finish.prompt_ids, finish.ending, now_ms)
    change = effects.change
    if isinstance(change, Pin):
        if change.pinned:
            doc.pin(change.entry_id)
        else:
            doc.unpin(change.entry_id)
    elif isinstance(change, SetFact):
        doc.set_fact(change.key, change.value, change.author)
    elif isinstance(change, SetPolicy):
        await tx.set_policy(session_id, change.policy.value)
        doc.set_policy(change.policy.value)
    for record in effects.audit:
        await insert_audit(
            tx.connection, session_id, now_ms, record.kind, record.actor, dict(record.data)
        )


async def finish_prompts(
    tx: StoreTx,
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


async def _store_entry(tx: StoreTx, doc: SessionDocument, session_id: str, entry: NewEntry) -> None:
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
