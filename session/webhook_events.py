"""The event types integrators subscribe to, and the body each delivery carries.

Webhook types are named for integrators (``reply.completed``) and map from the semantic
events (``session.events``); ``session.created`` and ``session.deleted`` are told by the
store as it creates or deletes a session. A body follows the Standard Webhooks payload
shape: ``{"type", "timestamp", "data"}``, where ``data`` is the event's data with its
``session_id`` and ``event_seq`` (0 for the session's own creation and deletion events,
which are not semantic events). Like the events, bodies carry ids and codes, no content,
with one exception: ``reply.completed`` carries the reply's ``text`` as it was when the
event was written, unless the reply drew on restricted material; then ``text`` is None
and ``text_withheld`` true (``webhook_data``). A restricted reply's text never leaves
through a webhook, whoever may read it in the session; nor does a ``run.failed`` reason
that may quote it (``reason_withheld``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SESSION_CREATED = "session.created"
SESSION_DELETED = "session.deleted"
QUOTA_EXCEEDED = "quota.exceeded"  # also told as run.failed, reason_code quota_exceeded

# Semantic event kind -> webhook type.
BY_KIND = {
    "prompt_accepted": "prompt.accepted",
    "reply_completed": "reply.completed",
    "run_failed": "run.failed",
    "member_joined": "member.added",
    "member_left": "member.removed",
}
TYPES = frozenset({*BY_KIND.values(), SESSION_CREATED, SESSION_DELETED, QUOTA_EXCEEDED})


def webhook_types(kind: str, data: dict[str, Any]) -> list[str]:
    """The webhook types a semantic event of ``kind`` is told as (none, one or two)."""
    told = BY_KIND.get(kind)
    if told is None:
        return []
    if kind == "run_failed" and data.get("reason_code") == "quota_exceeded":
        return [told, QUOTA_EXCEEDED]
    return [told]


REPLY_COMPLETED = BY_KIND["reply_completed"]
RUN_FAILED = BY_KIND["run_failed"]
WITHHELD_REASON = "withheld: the run drew on restricted material (the server's log has it)"


def webhook_data(
    webhook_type: str, data: dict[str, Any], replies: Mapping[str, str | None]
) -> dict[str, Any]:
    """The ``data`` a delivery of ``webhook_type`` carries for an event's ``data``.

    ``replies``: the text of each reply completed in the event's write, None for a
    restricted one. A reply missing from it is withheld too: text is only ever sent when
    the writer said it may be. A failed run's reply listed as None: its reason may quote
    restricted material, and is withheld (``reason_withheld``)."""
    if webhook_type == RUN_FAILED:
        reply_id = str(data.get("reply_id"))
        if reply_id in replies and replies[reply_id] is None:
            return {**data, "reason": WITHHELD_REASON, "reason_withheld": True}
        return data
    if webhook_type != REPLY_COMPLETED:
        return data
    text = replies.get(data["reply_id"])
    return {**data, "text": text, "text_withheld": text is None}


@dataclass(frozen=True, slots=True)
class Subscription:
    """What a subscription asks for: event types, and sessions (None: every session).
    A ``full`` one (its outbox reached its cap) wants nothing until it is resumed."""

    id: str
    events: frozenset[str]
    sessions: frozenset[str] | None
    full: bool = False

    def wants(self, session_id: str, webhook_type: str) -> bool:
        in_session = self.sessions is None or session_id in self.sessions
        return not self.full and in_session and webhook_type in self.events


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One delivery to write: to which subscription, its message id, type and body."""

    webhook_id: str
    message_id: str
    type: str
    payload: str


def message_id(webhook_id: str, session_id: str, event_seq: int, webhook_type: str) -> str:
    """The ``webhook-id`` of an event for one subscription, the same on every attempt."""
    return f"msg_{webhook_id}_{session_id}_{event_seq}_{webhook_type}"


def timestamp_ms(at_ms: int) -> str:
    """A body's ``timestamp``: RFC 3339 in UTC, always with milliseconds
    (``2026-12-07T08:11:03.000Z``), so a receiver parses one fixed form (``isoformat``
    left the fraction out when the millisecond was 0, and gave six digits otherwise)."""
    seconds, ms = divmod(at_ms, 1000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{ms:03d}Z"


def outgoing(
    subscriptions: Sequence[Subscription],
    session_id: str,
    event_seq: int,
    at_ms: int,
    webhook_type: str,
    data: dict[str, Any],
) -> list[Outgoing]:
    """The deliveries of one event: one per subscription that wants it."""
    wanting = [s for s in subscriptions if s.wants(session_id, webhook_type)]
    if not wanting:
        return []
    timestamp = timestamp_ms(at_ms)
    body = json.dumps(
        {
            "type": webhook_type,
            "timestamp": timestamp,
            "data": {"session_id": session_id, "event_seq": event_seq, **data},
        },
        separators=(",", ":"),
    )
    return [
        Outgoing(s.id, message_id(s.id, session_id, event_seq, webhook_type), webhook_type, body)
        for s in wanting
    ]
