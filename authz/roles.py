"""Roles and the capabilities they carry; one function answers "may this role do this?"."""

from __future__ import annotations

from enum import StrEnum

from session.errors import Forbidden


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
    PIN = "pin"


ROLE_CAPABILITIES: dict[Role, frozenset[Capability]] = {
    Role.VIEWER: frozenset({Capability.READ_SESSION, Capability.BE_PRESENT}),
    Role.EDITOR: frozenset(
        {
            Capability.READ_SESSION,
            Capability.BE_PRESENT,
            Capability.PROMPT,
            Capability.POST_MESSAGE,
            Capability.CANCEL_OWN,
            Capability.PIN,
        }
    ),
    Role.OWNER: frozenset(Capability),
}


def may(role: Role, capability: Capability) -> bool:
    return capability in ROLE_CAPABILITIES[role]


def require(role: Role, capability: Capability) -> None:
    """Raise ``Forbidden`` unless ``role`` carries ``capability``."""
    if not may(role, capability):
        raise Forbidden(f"a {role.value} may not {capability.value.replace('_', ' ')}")


def may_cancel(role: Role, *, issuer: str, author: str) -> bool:
    if may(role, Capability.CANCEL_ANY):
        return True
    return issuer == author and may(role, Capability.CANCEL_OWN)
