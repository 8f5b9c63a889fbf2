"""decide() for cancel, read and tool use; a run's scope; restrictions."""

from __future__ import annotations

import pytest

from parley.authz.policy import (
    Cancel,
    Read,
    Readers,
    Subject,
    UseTool,
    decide,
    everyone_may_read,
    may_read,
    restrict,
    restriction_from_json,
    restriction_to_json,
)
from parley.authz.roles import Capability, Member, RoleTable
from parley.authz.scope import ToolDef, scope_for_run
from parley.session.errors import Forbidden
from parley.session.model import ToolSpec

TABLE = RoleTable({"support": frozenset({Capability.READ_SESSION, Capability.PROMPT})})


def who(user: str, role: str, **kw: frozenset[str]) -> Subject:
    return Subject.of(Member(user, role, **kw), TABLE)


@pytest.mark.parametrize(
    ("role", "own", "others"),
    [("viewer", False, False), ("editor", True, False), ("owner", True, True)],
)
def test_cancel(role: str, own: bool, others: bool) -> None:
    alice = who("alice", role)
    assert decide(alice, Cancel("alice")).allowed is own
    assert decide(alice, Cancel("bob")).allowed is others


HANDBOOK = Readers("handbook", users=frozenset({"bob"}), roles=frozenset({"owner"}))


def test_read_by_user_role_or_grant_and_a_denial_wins() -> None:
    assert may_read(who("bob", "viewer"), (HANDBOOK,))
    assert may_read(who("olga", "owner"), (HANDBOOK,))
    assert not may_read(who("alice", "editor"), (HANDBOOK,))
    assert may_read(who("alice", "editor", grants=frozenset({"read:handbook"})), (HANDBOOK,))
    denied = who("bob", "owner", denials=frozenset({"read:handbook"}))
    assert not may_read(denied, (HANDBOOK,))
    reason = decide(who("alice", "editor"), Read((HANDBOOK,))).reason
    assert "handbook" in reason


def test_an_unrestricted_item_needs_read_session_only() -> None:
    assert may_read(who("v", "viewer"), ())
    no_read = who("v", "viewer", denials=frozenset({Capability.READ_SESSION}))
    assert not may_read(no_read, ())
    assert not may_read(None, ())


def test_a_restriction_is_a_conjunction() -> None:
    other = Readers("payroll", users=frozenset({"alice"}))
    both = restrict((HANDBOOK,), (other,), (HANDBOOK,))
    assert both == (HANDBOOK, other)
    assert not may_read(who("bob", "viewer"), both)
    assert not may_read(who("alice", "viewer"), both)
    assert may_read(who("bob", "viewer", grants=frozenset({"read:payroll"})), both)
    assert restriction_from_json(restriction_to_json(both)) == both


def test_tool_use_needs_the_tools_capability() -> None:
    deploy = UseTool("deploy", "tool:deploy")
    assert not decide(who("a", "editor"), deploy).allowed
    assert decide(who("a", "editor", grants=frozenset({"tool:deploy"})), deploy).allowed


SEARCH = ToolDef(ToolSpec("search_documents", "search"), Capability.SEARCH_DOCUMENTS)
DEPLOY = ToolDef(ToolSpec("deploy", "deploy"), "tool:deploy")


def test_scope_offers_only_the_tools_every_issuer_may_use() -> None:
    ann = who("ann", "editor", grants=frozenset({"tool:deploy"}))
    ben = who("ben", "editor")
    alone = scope_for_run([("ann", ann)], [SEARCH, DEPLOY])
    assert [t.spec.name for t in alone.tools] == ["search_documents", "deploy"]
    together = scope_for_run([("ann", ann), ("ben", ben)], [SEARCH, DEPLOY])
    assert [t.spec.name for t in together.tools] == ["search_documents"]
    assert together.tool("deploy") is None
    assert Capability.PROMPT in together.capabilities
    assert "tool:deploy" not in together.capabilities


def test_scope_reads_only_what_every_issuer_may_read() -> None:
    bob, alice = who("bob", "editor"), who("alice", "editor")
    assert scope_for_run([("bob", bob)], []).withheld((HANDBOOK,)) is None
    reason = scope_for_run([("bob", bob), ("alice", alice)], []).withheld((HANDBOOK,))
    assert reason is not None and "alice" in reason


def test_scope_refuses_an_issuer_who_may_no_longer_prompt() -> None:
    with pytest.raises(Forbidden, match="carol"):
        scope_for_run([("carol", who("carol", "viewer"))], [SEARCH])
    with pytest.raises(Forbidden, match="not a member"):
        scope_for_run([("gone", None)], [SEARCH])


def test_everyone_may_read_counts_members_who_may_not_read_the_session_now() -> None:
    """Review R3-2: a member whose ``read_session`` is suspended is still a member, whose
    reading once it is back must be respected."""
    bob, olga = who("bob", "viewer"), who("olga", "owner")
    blind = who("x", "viewer", denials=frozenset({Capability.READ_SESSION}))
    assert everyone_may_read([bob, olga], (HANDBOOK,))
    assert not everyone_may_read([bob, olga, blind], (HANDBOOK,))
    assert not everyone_may_read([bob, olga, who("alice", "editor")], (HANDBOOK,))
    assert everyone_may_read([bob, olga, blind], ())
    granted = Subject("x", "blind", frozenset({"read:handbook"}))  # a reader, not now
    assert everyone_may_read([bob, olga, granted], (HANDBOOK,))
    assert everyone_may_read([], (HANDBOOK,))
