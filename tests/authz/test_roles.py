"""The role/capability table and the cancel rule."""

from __future__ import annotations

import itertools

import pytest

from authz.roles import ROLE_CAPABILITIES, Capability, Role, may, may_cancel, require
from session.errors import Forbidden

C = Capability

# Written from the product rules, not copied from the table.
EXPECTED = {
    Role.VIEWER: {C.READ_SESSION, C.BE_PRESENT},
    Role.EDITOR: {C.READ_SESSION, C.BE_PRESENT, C.PROMPT, C.POST_MESSAGE, C.CANCEL_OWN, C.PIN},
    Role.OWNER: {
        C.READ_SESSION,
        C.BE_PRESENT,
        C.PROMPT,
        C.POST_MESSAGE,
        C.CANCEL_OWN,
        C.CANCEL_ANY,
        C.MANAGE_SESSION,
        C.PIN,
    },
}


@pytest.mark.parametrize(("role", "capability"), list(itertools.product(Role, Capability)), ids=str)
def test_capability_matrix(role: Role, capability: Capability) -> None:
    allowed = capability in EXPECTED[role]
    assert may(role, capability) is allowed
    if allowed:
        require(role, capability)
    else:
        with pytest.raises(Forbidden) as info:
            require(role, capability)
        assert info.value.code == "forbidden"
        assert role.value in info.value.message


def test_every_role_is_in_the_table() -> None:
    assert set(ROLE_CAPABILITIES) == set(Role)


def test_roles_are_nested() -> None:
    assert ROLE_CAPABILITIES[Role.VIEWER] < ROLE_CAPABILITIES[Role.EDITOR]
    assert ROLE_CAPABILITIES[Role.EDITOR] < ROLE_CAPABILITIES[Role.OWNER]


def test_only_the_owner_manages_the_session() -> None:
    require(Role.OWNER, C.MANAGE_SESSION)
    for role in (Role.EDITOR, Role.VIEWER):
        with pytest.raises(Forbidden, match="may not manage session"):
            require(role, C.MANAGE_SESSION)


def test_viewer_cannot_prompt_or_post() -> None:
    with pytest.raises(Forbidden, match="viewer may not prompt"):
        require(Role.VIEWER, C.PROMPT)
    with pytest.raises(Forbidden, match="viewer may not post message"):
        require(Role.VIEWER, C.POST_MESSAGE)


@pytest.mark.parametrize(
    ("role", "own", "others"),
    [(Role.VIEWER, False, False), (Role.EDITOR, True, False), (Role.OWNER, True, True)],
)
def test_may_cancel(role: Role, own: bool, others: bool) -> None:
    assert may_cancel(role, issuer="alice", author="alice") is own
    assert may_cancel(role, issuer="alice", author="bob") is others
