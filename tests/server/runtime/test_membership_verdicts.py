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
