"""The keys of members' folded names (``members_0027``), on each database: a name set is
compared with the members whose user id or name may read alike, found by an index, and
with rows stored without keys; the migration keys the rows there are, and goes down again.
Review R4-3: a rename folded every member's user id and name, on the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from alembic import command
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.migrations.member_keys import folded_key
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


async def _stored(
    engine: AsyncEngine, names: dict[str, str], key: Callable[[str], str] | None = None
) -> None:
    """A session ``s1`` whose members are ``names`` (user id: display name), stored as a
    revision before the head stores them: keyed by ``key`` (None: no keys)."""
    async with engine.begin() as connection:
        await connection.execute(
            insert(sessions).values(id="s1", title="t", created_at=0, last_seq=0, policy="queue")
        )
        for user_id, name in names.items():
            keys = {} if key is None else {"user_id_key": key(user_id), "name_key": key(name)}
            await connection.execute(
                insert(members).values(
                    session_id="s1",
                    user_id=user_id,
                    role="viewer",
                    created_at=0,
                    token_epoch="e",
                    display_name=name,
                    **keys,
                )
            )


async def _keyed_as_now(engine: AsyncEngine, names: dict[str, str]) -> None:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(members.c.user_id, members.c.user_id_key, members.c.name_key)
        )
        assert {r[0]: (r[1], r[2]) for r in rows} == {
            u: (name_key(u), name_key(n)) for u, n in names.items()
        }


async def _refused_as_taken(store: Store, name: str) -> None:
    """bob may not take ``name``: it reads as another member's."""
    with pytest.raises(Conflict, match="another member's name"):
        await store.change_member(
            "s1", "bob", Member("bob", "viewer"), 1, allow, display_name=name, distinct_name=True
        )


async def test_the_migration_keys_the_members_there_are_and_goes_down_again(
    empty_database_url: str,
) -> None:
    config = alembic_config(empty_database_url)
    await asyncio.to_thread(command.upgrade, config, "webhooks_0026")
    engine = create_engine(empty_database_url)
    old = {"ann": "\uff21nn", "bob": "", "carol": "Carol\u00a0 C"}
    try:
        await _stored(engine, old)
        await asyncio.to_thread(command.upgrade, config, "head")
        await _keyed_as_now(engine, old)
        store = Store(engine)
        await _refused_as_taken(store, "carol c")
        await goes_down_and_up(store, config, "webhooks_0026", members, "name_key")
    finally:
        await engine.dispose()


async def test_the_migration_keys_names_again_with_letters_that_look_alike(
    empty_database_url: str,
) -> None:
    """FX59: names were keyed and compared folded alone, so ``\u0430lice`` (a Cyrillic a)
    passed for ``alice``. Keys are of names read with look-alike letters as the Latin
    ones now (``session.names.name_key``); ``members_0034`` keys the rows there are again,
    so a name is still found by its key."""
    config = alembic_config(empty_database_url)
    await asyncio.to_thread(command.upgrade, config, "webhooks_0033")
    engine = create_engine(empty_database_url)
    old = {"ann": "\u0410nn", "bob": "", "carol": "Carol"}
    try:
        await _stored(engine, old, folded_key)
        assert folded_key("\u0410nn") != name_key("\u0410nn")  # keyed anew
        await asyncio.to_thread(command.upgrade, config, "head")
        await _keyed_as_now(engine, old)
        async with engine.connect() as connection:
            assert await members_named(connection, "s1", ["ANN"]) == [("ann", "\u0410nn")]
        store = Store(engine)
        await _refused_as_taken(store, "ann")
        await asyncio.to_thread(command.downgrade, config, "webhooks_0033")
        async with engine.connect() as connection:  # keyed as that revision keys them
            rows = await connection.execute(select(members.c.user_id, members.c.name_key))
            assert {r[0]: r[1] for r in rows} == {u: folded_key(n) for u, n in old.items()}
        await asyncio.to_thread(command.upgrade, config, "head")
    finally:
        await engine.dispose()
