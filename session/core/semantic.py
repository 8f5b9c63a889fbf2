"""Which semantic events (``session.events``) an event's effects make happen.

Read from the document as committed before the effects are carried out, so the writer
stores exactly these, in this order, in the effects' own transaction.
"""

from __future__ import annotations

from parley.authz.tokens import ADMIN_ACTOR
from parley.session.core.effects import Effects, Pin, SetFact, SetPolicy
from parley.session.entries import EntryKind
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
from parley.session.schema import SessionDocument


def events_of(doc: SessionDocument, effects: Effects, actor: str) -> tuple[SessionEvent, ...]:
    """The events of ``effects`` made by ``actor`` (``""``: the admin API; the server's
    own steps name nobody) on ``doc`` as it is before they are carried out."""
    events: list[SessionEvent] = []
    by = actor or ADMIN_ACTOR
    entry = effects.entry
    if entry is not None:
        made = PromptAccepted if entry.kind is EntryKind.PROMPT else MessagePosted
        events.append(made(entry.id, entry.seq, entry.author))
    for finish in effects.finish:
        by_reply: dict[str | None, list[str]] = {}
        for prompt_id in finish.prompt_ids:
            by_reply.setdefault(doc.entry(prompt_id).reply_id, []).append(prompt_id)
        ending = finish.ending
        for reply, ids in by_reply.items():
            if ending is not None:
                events.append(RunFailed.of(tuple(ids), reply, ending))
            elif reply is not None:
                events.append(ReplyCompleted(reply, tuple(ids)))
    begin = effects.begin
    if begin is not None:
        events.append(RunStarted(begin.reply_id, begin.run.ids, begin.run.authors))
    change = effects.change
    # The rules make a Pin or a SetFact only when it changes something (``rules._pin``,
    # ``rules._fact``).
    if isinstance(change, Pin):
        events.append(PinChanged(change.entry_id, change.pinned, by))
    elif isinstance(change, SetFact):
        events.append(FactSet(change.key, change.value is None, by))
    elif isinstance(change, SetPolicy) and doc.meta.get("policy") != change.policy.value:
        events.append(SettingsChanged({"policy": change.policy.value}, by))
    return tuple(events)
