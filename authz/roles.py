"""Roles and the capabilities they carry: the built-in table and custom roles.

A capability is a short string. The built-in ones are the ``Capability`` members; an
integrator adds others by naming them in a custom role or a member's grants, usually
``tool:<name>`` (use tool ``name``) or ``read:<document id>`` (read that document even if
its reader list does not name you). What a member may do is their role's capabilities plus
their grants, minus their denials (``capabilities_of``); ``authz.policy.decide`` is the one
place that turns that set into allowed or denied.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from parley.session.errors import InvalidInput


class Role(StrEnum):
    OWNER = "owner"
    EDITOR = "editor"
    VIEWER = "viewer"


class Capability(StrEnum):
    READ_SESSION = "read_session"
    BE_PRESENT = "be_present"
    PROMPT = "prompt"
    POST_MESSAGE = "post_message"
    CANCEL_OWN = "cancel_own"
    CANCEL_ANY = "cancel_any"
    MANAGE_SESSION = "manage_session"
    MANAGE_MEMBERS = "manage_members"
    PIN = "pin"
    READ_AUDIT = "read_audit"
    SEARCH_DOCUMENTS = "tool:search_documents"


ROLE_CAPABILITIES: dict[Role, frozenset[str]] = {
    Role.VIEWER: frozenset({Capability.READ_SESSION, Capability.BE_PRESENT}),
    Role.EDITOR: frozenset(
        {
            Capability.READ_SESSION,
            Capability.BE_PRESENT,
            Capability.PROMPT,
            Capability.POST_MESSAGE,
            Capability.CANCEL_OWN,
            Capability.PIN,
            Capability.SEARCH_DOCUMENTS,
        }
    ),
    Role.OWNER: frozenset(Capability),
}

CAPABILITY_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}(:[A-Za-z0-9_.-]{1,100})?")
ROLE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
MAX_CAPABILITIES = 100


def tool_capability(tool: str) -> str:
    """The capability that lets a member use tool ``tool`` unless the tool names another."""
    return f"tool:{tool}"


def check_capabilities(names: Iterable[str]) -> frozenset[str]:
    """Validate capability names (``InvalidInput`` names the first bad one)."""
    checked = frozenset(names)
    if len(checked) > MAX_CAPABILITIES:
        raise InvalidInput(f"at most {MAX_CAPABILITIES} capabilities")
    for name in sorted(checked):
        if not CAPABILITY_NAME.fullmatch(name):
            raise InvalidInput(
                f"capability {name!r}: a lower-case word, optionally ':' and a name"
                " (e.g. 'tool:deploy', 'read:handbook')"
            )
    return checked


def check_role_name(name: str) -> str:
    if not ROLE_NAME.fullmatch(name):
        raise InvalidInput("a role name is 1-32 lower-case letters, digits, _ or -")
    return name


@dataclass(frozen=True, slots=True)
class RoleTable:
    """Built-in roles plus the custom ones an integrator defined."""

    custom: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __contains__(self, role: str) -> bool:
        return role in Role.__members__.values() or role in self.custom

    def capabilities(self, role: str) -> frozenset[str]:
        """The role's capabilities; an unknown role carries none."""
        if role in Role.__members__.values():
            return ROLE_CAPABILITIES[Role(role)]
        return self.custom.get(role, frozenset())

    def names(self) -> list[str]:
        return [r.value for r in Role] + sorted(self.custom)


@dataclass(frozen=True, slots=True)
class Member:
    """A member of a session as stored: their role and their own grants and denials, and
    the epoch of this membership (new each time the user is added; their client tokens
    carry it, so removing a member ends every token issued to them) and when it began
    (``joined_at``, ms; 0: not known)."""

    user_id: str
    role: str
    grants: frozenset[str] = frozenset()
    denials: frozenset[str] = frozenset()
    token_epoch: str = ""
    joined_at: int = 0


def capabilities_of(member: Member, roles: RoleTable) -> frozenset[str]:
    """Role capabilities plus grants, minus denials (a denial always wins)."""
    return (roles.capabilities(member.role) | member.grants) - member.denials
