"""``Membership.everyone_may_read`` is kept between the batches of a restricted reply, and
never past a change of the members or of the role table."""

from __future__ import annotations

from typing import Any

from parley.authz.policy import Readers
from parley.authz.roles import Member, RoleTable
from parley.server.runtime.membership import Membership


async def test_the_kept_answer_follows_the_members_and_the_roles() -> None:
    tables = [RoleTable({"asker": frozenset({"read_session", "prompt"})})]

    async def stop(_event: Any) -> None:
        return None

    members = Membership(
        "s",
        store=None,  # type: ignore[arg-type]  # the store is not read here
        roles=lambda: tables[-1],
        clock=lambda: 0.0,
        sockets=lambda: [],
        changed=lambda: None,
        stop=stop,
    )
    await members.set_member("alice", Member("alice", "editor"))
    await members.set_member("bob", Member("bob", "asker"))
    plans = (Readers("doc:plans", users=frozenset({"alice", "bob"})),)
    editors = (Readers("doc:eng", roles=frozenset({"editor", "asker"})),)
    assert members.everyone_may_read(plans) and members.everyone_may_read(editors)

    await members.set_member("carol", Member("carol", "viewer"))  # may not read plans
    assert not members.everyone_may_read(plans)
    await members.set_member("carol", None)
    assert members.everyone_may_read(plans)

    # bob's custom role is given ``read:doc:eng``: he reads it now. The role table is
    # replaced on every change, and the kept answer with it.
    engineers = (Readers("doc:eng", roles=frozenset({"editor"})),)
    assert not members.everyone_may_read(engineers)
    tables.append(RoleTable({"asker": frozenset({"read_session", "prompt", "read:doc:eng"})}))
    assert members.everyone_may_read(engineers)
    # It loses ``read_session``: bob is still a member, whose reading counts (review R3-2).
    tables.append(RoleTable({"asker": frozenset({"prompt"})}))
    assert not members.everyone_may_read(engineers)


async def test_members_as_stored_are_judged_by_until_in_force() -> None:
    """Cluster mode (reviews RH-2, RH-3): the members as stored, read by the fence of the
    node that runs the session, are what every member may read and who may prompt is
    judged by until their change is in force there: one demoted, one added, one removed
    (still sent the document there meanwhile: nothing restricted is everyone's)."""
    roles = RoleTable({})

    async def stop(_event: Any) -> None:
        return None

    members = Membership(
        "s",
        store=None,  # type: ignore[arg-type]  # the store is not read here
        roles=lambda: roles,
        clock=lambda: 0.0,
        sockets=lambda: [],
        changed=lambda: None,
        stop=stop,
    )
    for user_id in ("alice", "bob", "carol"):
        await members.set_member(user_id, Member(user_id, "editor"))
    editors = (Readers("doc:eng", roles=frozenset({"editor"})),)
    assert members.everyone_may_read(editors)

    members.hold_stored(
        [Member(u, "editor") for u in ("alice", "carol")] + [Member("bob", "viewer")], {}
    )
    assert not members.everyone_may_read(editors)
    bob = members.subject("bob")
    assert bob is not None and bob.role == "viewer"
    assert members.members["bob"].role == "editor"  # not in force

    members.hold_stored([Member(u, "editor") for u in ("alice", "bob", "carol", "dave")], {})
    assert members.everyone_may_read(editors)
    assert members.subject("dave") is not None  # added elsewhere: judged as stored

    members.hold_stored([Member(u, "editor") for u in ("alice", "bob")], {})
    assert members.subject("carol") is None
    assert not members.everyone_may_read(editors)  # carol is still here, not yet removed
    await members.set_member("carol", None)
    await members.set_member("dave", Member("dave", "editor"))
    assert members.pending == {} and members.everyone_may_read(editors)
