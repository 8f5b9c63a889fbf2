"""The built-in role table, custom roles, grants and denials, and capability names."""

from __future__ import annotations

import itertools

import pytest

from parley.authz.policy import Do, Subject, decide
from parley.authz.roles import (
    ROLE_CAPABILITIES,
    Capability,
    Member,
    Role,
    RoleTable,
    capabilities_of,
    check_capabilities,
    check_role_name,
)
from parley.session.errors import Forbidden, InvalidInput

C = Capability

# Written from the product rules, not copied from the table.
EXPECTED = {
    Role.VIEWER: {C.READ_SESSION, C.BE_PRESENT},
    Role.EDITOR: {
        C.READ_SESSION,
        C.BE_PRESENT,
        C.PROMPT,
        C.POST_MESSAGE,
        C.CANCEL_OWN,
        C.PIN,
        C.SEARCH_DOCUMENTS,
    },
    Role.OWNER: set(Capability),
}


def subject(role: str, table: RoleTable | None = None, **kw: frozenset[str]) -> Subject:
    return Subject.of(Member("alice", role, **kw), table or RoleTable())


@pytest.mark.parametrize(("role", "capability"), list(itertools.product(Role, Capability)), ids=str)
def test_capability_matrix(role: Role, capability: Capability) -> None:
    allowed = capability in EXPECTED[role]
    decision = decide(subject(role), Do(capability))
    assert decision.allowed is allowed
    if allowed:
        decision.require()
    else:
        with pytest.raises(Forbidden) as info:
            decision.require()
        assert info.value.code == "forbidden"
        assert role.value in info.value.message


def test_every_role_is_in_the_table() -> None:
    assert set(ROLE_CAPABILITIES) == set(Role)


def test_roles_are_nested() -> None:
    assert ROLE_CAPABILITIES[Role.VIEWER] < ROLE_CAPABILITIES[Role.EDITOR]
    assert ROLE_CAPABILITIES[Role.EDITOR] < ROLE_CAPABILITIES[Role.OWNER]


def test_a_custom_role_carries_exactly_its_capabilities() -> None:
    table = RoleTable({"auditor": frozenset({C.READ_SESSION, C.READ_AUDIT})})
    assert "auditor" in table and "nobody" not in table
    auditor = subject("auditor", table)
    assert decide(auditor, Do(C.READ_AUDIT)).allowed
    assert not decide(auditor, Do(C.PROMPT)).allowed
    assert table.names() == ["owner", "editor", "viewer", "auditor"]
    # A role that no longer exists carries nothing.
    assert capabilities_of(Member("x", "gone"), table) == frozenset()


def test_grants_add_and_denials_win() -> None:
    member = Member(
        "alice",
        "viewer",
        grants=frozenset({C.PROMPT, "tool:deploy"}),
        denials=frozenset({C.PROMPT, C.BE_PRESENT}),
    )
    caps = capabilities_of(member, RoleTable())
    assert caps == {C.READ_SESSION, "tool:deploy"}


def test_not_a_member_may_do_nothing() -> None:
    decision = decide(None, Do(C.READ_SESSION))
    assert not decision.allowed and "not a member" in decision.reason


@pytest.mark.parametrize("name", ["tool:deploy", "read:doc-1", "prompt", "custom_thing"])
def test_capability_names_accepted(name: str) -> None:
    assert check_capabilities([name]) == {name}


@pytest.mark.parametrize("name", ["", "Tool", "tool:", "a b", "tool:x y", "x" * 41])
def test_capability_names_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_capabilities([name])


def test_role_names() -> None:
    assert check_role_name("support-agent") == "support-agent"
    with pytest.raises(InvalidInput):
        check_role_name("Support Agent")
