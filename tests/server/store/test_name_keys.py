"""The keys of members' folded names (``members_0027``), on each database: a name set is
compared with the members whose user id or name may read alike, found by an index, and
with rows stored without keys; the migration keys the rows there are, and goes down again.
Review R4-3: a rename folded every member's user id and name, on the event loop."""

from __future__ import annotations

import asyncio

import pytest
from alembic import command
from sqlalchemy import insert, select, update

from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.server.store.db import alembic_config, create_engine
from parley.server.store.rows import members_named
from parley.server.store.sessions import Store
from parley.server.store.tables import members, sessions
from parley.session.errors import Conflict
from parley.session.names import name_key
from tests.server.store.conftest import goes_down_and_up


def allow(*_: object) -> Decision:
    return Decision(True, "test")


async def _add(store: Store, user_id: str, name: str = "") -> None:
    member = Member(user_id, "viewer")
    await store.change_member("s1", user_id, member, 0, allow, display_name=name)


async def test_a_name_is_compared_with_the_members_it_may_read_as_alone(store: Store) -> None:
    for i in range(50):
        await _add(store, f"m{i}", f"Member {i}")
    await _add(store, "ann", "Ann\u200b Lee")  # an invisible character, stored before the rule
    async with store.engine.connect() as connection:
        assert await members_named(connection, "s1", ["ann lee"]) == [("ann", "Ann\u200b Lee")]
        assert await members_named(connection, "s1", ["\uff2d7"]) == [("m7", "Member 7")]
        assert await members_named(connection, "s1", ["member  7", "nobody"]) == [
            ("m7", "Member 7")
        ]
        assert await members_named(connection, "s1", ["", "\u200b"]) == []  # shows nothing
    with pytest.raises(Conflict, match="another member's name"):
        await store.change_member(
            "s1", "m1", Member("m1", "viewer"), 1, allow, display_name="ANN LEE", distinct_name=True
        )
    with pytest.raises(Conflict, match="another member's name"):  # an added user id
        await store.change_member("s1", "M3", Member("M3", "viewer"), 1, allow, max_members=100)
    renamed = await store.change_member(
        "s1", "m1", Member("m1", "viewer"), 1, allow, display_name="Annie", distinct_name=True
    )
    assert renamed.after is not None and renamed.after.display_name == "Annie"
    async with store.engine.connect() as connection:
        keys = (
            await connection.execute(
                select(members.c.user_id_key, members.c.name_key).where(
                    members.c.session_id == "s1", members.c.user_id == "m1"
                )
            )
        ).one()
    assert tuple(keys) == (name_key("m1"), name_key("Annie"))


async def test_a_row_stored_without_keys_is_still_compared(store: Store) -> None:
    """A row written by a version before the keys (a node not upgraded yet): NULL keys."""
    await _add(store, "bob", "Bob")
    async with store.transaction() as tx:
        await tx.connection.execute(
            update(members)
            .where(members.c.user_id == "bob")
            .values(user_id_key=None, name_key=None)
        )
    await _add(store, "eve")
    for name in ("BOB", "\uff42ob"):
        with pytest.raises(Conflict, match="another member's name"):
            await store.change_member(
                "s1",
                "eve",
                Member("eve", "viewer"),
                1,
                allow,
                display_name=name,
                distinct_name=True,
            )


async def test_the_migration_keys_the_members_there_are_and_goes_down_again(
    empty_database_url: str,
) -> None:
    config = alembic_config(empty_database_url)
    await asyncio.to_thread(command.upgrade, config, "webhooks_0026")
    engine = create_engine(empty_database_url)
    old = {"ann": "\uff21nn", "bob": "", "carol": "Carol\u00a0 C"}
    try:
        async with engine.begin() as connection:
            await connection.execute(
                insert(sessions).values(
                    id="s1", title="t", created_at=0, last_seq=0, policy="queue"
                )
            )
            for user_id, name in old.items():
                await connection.execute(
                    insert(members).values(
                        session_id="s1",
                        user_id=user_id,
                        role="viewer",
                        created_at=0,
                        token_epoch="e",
                        display_name=name,
                    )
                )
        await asyncio.to_thread(command.upgrade, config, "head")
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(members.c.user_id, members.c.user_id_key, members.c.name_key)
            )
            assert {r[0]: (r[1], r[2]) for r in rows} == {
                u: (name_key(u), name_key(n)) for u, n in old.items()
            }
        store = Store(engine)
        with pytest.raises(Conflict, match="another member's name"):
            await store.change_member(
                "s1",
                "bob",
                Member("bob", "viewer"),
                1,
                allow,
                display_name="carol c",
                distinct_name=True,
            )
        await goes_down_and_up(store, config, "webhooks_0026", members, "name_key")
    finally:
        await engine.dispose()
