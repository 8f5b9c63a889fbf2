"""Custom roles and the members given them, on each database: a role is never deleted
while it is given (review: a delete and two members given the role, raced across nodes,
left them holding a role that no longer existed)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import insert

from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.server.store.access import AccessStore
from parley.server.store.rows import hold_role
from parley.server.store.sessions import Store
from parley.server.store.tables import members
from parley.session.errors import Conflict, InvalidInput


def allow(*_: object) -> Decision:
    return Decision(True, "test")


async def test_a_role_deleted_is_not_given(store: Store) -> None:
    """The store checks the role in the writing transaction (the route's check is
    before it: a delete can come in between)."""
    access = AccessStore(store)
    await access.put_role("hr", frozenset({"read_session"}), 0)
    assert await access.delete_role("hr")
    with pytest.raises(InvalidInput, match="no role 'hr'"):
        await store.change_member("s1", "bob", Member("bob", "hr"), 0, allow)
    assert await store.list_members("s1") == []
    await store.change_member("s1", "bob", Member("bob", "editor"), 0, allow)  # built-in


async def test_a_delete_waits_for_a_member_being_given_the_role(store: Store) -> None:
    access = AccessStore(store)
    await access.put_role("hr", frozenset({"read_session"}), 0)
    async with store.transaction() as tx:  # a member being given the role
        assert await hold_role(tx.connection, "hr")
        deleting = asyncio.create_task(access.delete_role("hr"))
        await asyncio.sleep(0.2)  # the delete's chance to go first, were it not held
        await tx.connection.execute(
            insert(members).values(
                session_id="s1",
                user_id="bob",
                role="hr",
                created_at=0,
                grants="[]",
                denials="[]",
                token_epoch="e",
                display_name="",
            )
        )
    with pytest.raises(Conflict, match="held by 1 member"):
        await deleting
