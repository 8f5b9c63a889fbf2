"""The one decision: may this member do this, here, now?

Every REST route, WebSocket command, run start and tool call asks ``decide``. It is pure:
the caller passes the member as they are *now* (``Subject``, built from the live role table
and the member's grants and denials) and the action; it answers with a ``Decision`` that
carries the reason, so a refusal can be shown and audited as it was decided.

Reading is decided the same way: what a tool read, and anything derived from it, carries a
``Restriction`` (the ``Readers`` of each source, all of which must allow the reader).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from parley.authz.roles import Capability, Member, RoleTable, capabilities_of
from parley.session.errors import Forbidden, InvalidInput


@dataclass(frozen=True, slots=True)
class Subject:
    """A member as of now: who, which role, and what they may do."""

    user_id: str
    role: str
    capabilities: frozenset[str]
    denials: frozenset[str] = frozenset()

    @classmethod
    def of(cls, member: Member, roles: RoleTable) -> Subject:
        return cls(member.user_id, member.role, capabilities_of(member, roles), member.denials)


@dataclass(frozen=True, slots=True)
class Readers:
    """Who may read one resource: named users, members of named roles, and anyone granted
    ``read:<resource>``; a member denied ``read:<resource>`` may not, whatever the list."""

    resource: str
    users: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {"resource": self.resource, "users": sorted(self.users), "roles": sorted(self.roles)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Readers:
        return cls(str(data["resource"]), frozenset(data["users"]), frozenset(data["roles"]))


Restriction = tuple[Readers, ...]
"""Readers of every source something draws on; () means anyone who may read the session."""


def restrict(*parts: Iterable[Readers]) -> Restriction:
    """The restriction of something drawn from all of ``parts`` (deduplicated, ordered)."""
    merged = {r for part in parts for r in part}
    return tuple(sorted(merged, key=lambda r: (r.resource, sorted(r.users), sorted(r.roles))))


def restriction_to_json(restriction: Restriction) -> list[dict[str, Any]]:
    return [r.to_json() for r in restriction]


def restriction_from_json(data: Sequence[dict[str, Any]]) -> Restriction:
    return tuple(Readers.from_json(item) for item in data)


@dataclass(frozen=True, slots=True)
class Do:
    """Use a capability (prompt, pin, manage members, …)."""

    capability: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """Cancel a prompt written by ``author``."""

    author: str


@dataclass(frozen=True, slots=True)
class Read:
    restriction: Restriction


@dataclass(frozen=True, slots=True)
class UseTool:
    tool: str
    capability: str


Action = Do | Cancel | Read | UseTool
"""Membership changes are judged by ``authz.membership.judge_membership_change``."""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str

    def require(self) -> None:
        """Raise ``Forbidden`` with the reason unless allowed."""
        if not self.allowed:
            raise Forbidden(self.reason)


def _allow(reason: str = "allowed") -> Decision:
    return Decision(True, reason)


def _deny(reason: str) -> Decision:
    return Decision(False, reason)


def _readable(subject: Subject, readers: Readers) -> bool:
    grant = f"read:{readers.resource}"
    if grant in subject.denials:
        return False
    return (
        subject.user_id in readers.users
        or subject.role in readers.roles
        or grant in subject.capabilities
    )


def decide(subject: Subject | None, action: Action) -> Decision:
    """May ``subject`` (None: not a member) do ``action``? Pure; the reason says why not."""
    if subject is None:
        return _deny("you are not a member of this session")
    caps = subject.capabilities
    who = f"a {subject.role}" if subject.role else "this member"
    if isinstance(action, Do):
        if action.capability in caps:
            return _allow()
        return _deny(f"{who} may not {action.capability.replace('_', ' ')} here")
    if isinstance(action, Cancel):
        if Capability.CANCEL_ANY in caps:
            return _allow()
        if action.author == subject.user_id and Capability.CANCEL_OWN in caps:
            return _allow()
        return _deny("only the prompt's author or an owner may cancel it")
    if isinstance(action, UseTool):
        if action.capability in caps:
            return _allow()
        return _deny(f"{subject.user_id} may not use tool {action.tool!r}")
    if Capability.READ_SESSION not in caps:
        return _deny(f"{who} may not read this session")
    for readers in action.restriction:
        if not _readable(subject, readers):
            return _deny(f"restricted to the readers of {readers.resource}")
    return _allow()


def may_read(subject: Subject | None, restriction: Restriction) -> bool:
    return decide(subject, Read(restriction)).allowed


def everyone_may_read(members: Iterable[Subject], restriction: Restriction) -> bool:
    """True when every member is a reader of ``restriction``: only then may something
    drawn from it go into the shared document. Members who may not read the session now
    (a role without ``read_session``, or a denial of it) count too: their right may come
    back without their being added, and the document's history is theirs to read then
    (review R3-2: it gave them text drawn from a document they never could read)."""
    return all(_readable(m, readers) for m in members for readers in restriction)


def check_readers(users: Sequence[str], roles: Sequence[str]) -> None:
    if not users and not roles:
        raise InvalidInput("readers: name at least one user or role")
