"""Semantic events: what happened in a session, as typed values, in the session's order.

Every change of a session yields its events, and the writer stores them in the same
transaction as the change (``StoreTx.append_events``): a change that rolls back leaves no
event, a resent duplicate command (stored once) yields none the second time, and each
event gets the session's next event number, so events are read back in commit order.
Streamed reply text yields no event per token: the run yields ``run_started`` and then one
of ``reply_completed`` or ``run_failed``.

    kind              data                                              actor
    prompt_accepted   prompt_id, seq, author                            author
    message_posted    message_id, seq, author                           author
    run_started       reply_id, prompt_ids, issuers                     -
    reply_completed   reply_id, prompt_ids                              -
    run_failed        prompt_ids, reply_id (None: never ran),           -
                      reason_code (``session.reasons``), reason,
                      retry_at (ms since the epoch; None: no time)
    member_joined     user_id, role, grants, denials, by                by
    member_changed    user_id, role, grants, denials, by                by
    member_left       user_id, by                                       by
    settings_changed  changed ({field: new value}), by                  by
    pin_changed       entry_id, pinned, by                              by
    fact_set          key, removed, by                                  by

Events carry ids, authors, codes and settings, never content: no prompt, message, reply,
tool or fact text, and no restricted material, so what an event says is what anyone who
may see the session's membership and its transcript's shape may see. ``settings_changed``
accepts only the fields in ``SHOWN_SETTINGS``, none of them a secret. Whoever delivers
events further (the HTTP stream, webhooks) still applies the reader's scope: an event
names an entry the reader may be unable to read, and the reader then fetches that entry
through the scoped read paths, not from the event.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, ClassVar, get_args

from parley.session.reasons import Ending, ReasonCode

# The session settings a ``settings_changed`` event may show, with their new value.
SHOWN_SETTINGS = frozenset(
    {"title", "policy", "model", "restricted_replies", "restricted_replies_by"}
)


class _Event:
    """What every event has: a stable ``kind``, an ``actor`` and JSON-safe ``data()``."""

    __slots__ = ()
    kind: ClassVar[str]

    @property
    def actor(self) -> str | None:
        """Who caused it (a member, ``admin``), or None for the server (runs)."""
        by = getattr(self, "by", None)
        return getattr(self, "author", by)

    def data(self) -> dict[str, Any]:
        """The event's fields as JSON values (tuples as lists, codes as strings)."""
        return {f.name: _json(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


def _json(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, slots=True)
class PromptAccepted(_Event):
    kind: ClassVar[str] = "prompt_accepted"
    prompt_id: str
    seq: int
    author: str


@dataclass(frozen=True, slots=True)
class MessagePosted(_Event):
    kind: ClassVar[str] = "message_posted"
    message_id: str
    seq: int
    author: str


@dataclass(frozen=True, slots=True)
class RunStarted(_Event):
    kind: ClassVar[str] = "run_started"
    reply_id: str
    prompt_ids: tuple[str, ...]
    issuers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReplyCompleted(_Event):
    kind: ClassVar[str] = "reply_completed"
    reply_id: str
    prompt_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RunFailed(_Event):
    """Prompts that ended without an answer, for one cause: cancelled or superseded while
    waiting (``reply_id`` None), or a run that stopped (timeout, provider error, quota,
    restart, ...). The code decides the statuses (``session.reasons.OUTCOMES``)."""

    kind: ClassVar[str] = "run_failed"
    prompt_ids: tuple[str, ...]
    reply_id: str | None
    reason_code: ReasonCode
    reason: str
    # When the prompts may be sent again (``Ending.retry_at``). Events stored before it
    # was told have none.
    retry_at: int | None = None

    @classmethod
    def of(cls, prompt_ids: tuple[str, ...], reply_id: str | None, ending: Ending) -> RunFailed:
        return cls(prompt_ids, reply_id, ending.code, ending.reason, ending.retry_at)


@dataclass(frozen=True, slots=True)
class _MemberState(_Event):
    """A member as they are after the change (their own grants and denials, sorted)."""

    user_id: str
    role: str
    grants: tuple[str, ...]
    denials: tuple[str, ...]
    by: str


@dataclass(frozen=True, slots=True)
class MemberJoined(_MemberState):
    kind: ClassVar[str] = "member_joined"


@dataclass(frozen=True, slots=True)
class MemberChanged(_MemberState):
    kind: ClassVar[str] = "member_changed"


@dataclass(frozen=True, slots=True)
class MemberLeft(_Event):
    kind: ClassVar[str] = "member_left"
    user_id: str
    by: str


@dataclass(frozen=True, slots=True)
class SettingsChanged(_Event):
    """Settings that changed, with their new values (None: back to the default)."""

    kind: ClassVar[str] = "settings_changed"
    changed: dict[str, str | None]
    by: str | None

    def __post_init__(self) -> None:
        hidden = set(self.changed) - SHOWN_SETTINGS
        if hidden:
            raise ValueError(f"settings an event may not show: {sorted(hidden)}")
        if not self.changed:
            raise ValueError("a settings_changed event names at least one setting")

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.changed.items())), self.by))


@dataclass(frozen=True, slots=True)
class PinChanged(_Event):
    kind: ClassVar[str] = "pin_changed"
    entry_id: str
    pinned: bool
    by: str | None


@dataclass(frozen=True, slots=True)
class FactSet(_Event):
    kind: ClassVar[str] = "fact_set"
    key: str
    removed: bool
    by: str | None


SessionEvent = (
    PromptAccepted
    | MessagePosted
    | RunStarted
    | ReplyCompleted
    | RunFailed
    | MemberJoined
    | MemberChanged
    | MemberLeft
    | SettingsChanged
    | PinChanged
    | FactSet
)

KINDS: dict[str, type[SessionEvent]] = {cls.kind: cls for cls in get_args(SessionEvent)}


def decode(kind: str, data: dict[str, Any]) -> SessionEvent:
    """The event stored as ``kind`` and ``data`` (``KeyError``/``TypeError``/``ValueError``
    for what no event of this version wrote)."""
    cls = KINDS[kind]
    values = dict(data)
    for f in fields(cls):
        value = values.get(f.name)
        if isinstance(value, list):
            values[f.name] = tuple(value)
    if cls is RunFailed:
        values["reason_code"] = ReasonCode(values["reason_code"])
    return cls(**values)


@dataclass(frozen=True, slots=True)
class Membership:
    """A member's role and own grants and denials, as a membership event shows them."""

    role: str
    grants: tuple[str, ...] = ()
    denials: tuple[str, ...] = ()


def membership_event(
    user_id: str, before: Membership | None, after: Membership | None, by: str
) -> MemberJoined | MemberChanged | MemberLeft | None:
    """The event of a membership change from ``before`` to ``after`` (None: not a member);
    None when nothing changed."""
    if after is None:
        return None if before is None else MemberLeft(user_id, by)
    grants, denials = tuple(sorted(after.grants)), tuple(sorted(after.denials))
    if before is None:
        return MemberJoined(user_id, after.role, grants, denials, by)
    if (before.role, tuple(sorted(before.grants)), tuple(sorted(before.denials))) == (
        after.role,
        grants,
        denials,
    ):
        return None
    return MemberChanged(user_id, after.role, grants, denials, by)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as stored: its session, its number there (from 1, in commit order), when
    (milliseconds since the epoch), its kind, actor and data."""

    session_id: str
    seq: int
    at_ms: int
    kind: str
    actor: str | None
    data: dict[str, Any]

    def event(self) -> SessionEvent:
        return decode(self.kind, self.data)

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "seq": self.seq,
            "at_ms": self.at_ms,
            "kind": self.kind,
            "actor": self.actor,
            "data": self.data,
        }
