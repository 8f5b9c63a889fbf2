"""Tokens from members' invite links in the store (``link_tokens``, ``tokens_0031``), on
each database: a token issued to their member another way revokes those of other makers
(audited, with the token), and the migration goes down and up."""

from __future__ import annotations

import asyncio

from alembic import command

from parley.authz.tokens import ClientClaims
from parley.server.store.access import AccessStore, insert_client_token
from parley.server.store.db import alembic_config, create_engine
from parley.server.store.sessions import Store
from parley.server.store.tables import client_tokens, entries, invites
from tests.server.store.conftest import goes_down_and_up, migration_goes_down_and_up

NOW = 1_700_000_000


def _claims(token_id: str, user_id: str, made_by: str = "") -> ClientClaims:
    return ClientClaims(user_id, "s1", NOW + 600, token_id, "e", made_by, "a1" if made_by else "")


async def test_link_tokens_are_revoked_once_their_member_is_known(
    empty_database_url: str,
) -> None:
    config = alembic_config(empty_database_url)
    await asyncio.to_thread(command.upgrade, config, "head")
    store = Store(create_engine(empty_database_url))
    try:
        await store.create_session("s1", "t", "queue", 0)
        async with store.engine.begin() as connection:
            for token_id, user_id in (("by-ann", "carol"), ("by-ann-dan", "dan")):
                claims = _claims(token_id, user_id, "ann")
                assert await insert_client_token(connection, claims, NOW) == {}
            # Another maker's link for dan: the first maker's token is dead.
            other = await insert_client_token(connection, _claims("by-bob", "dan", "bob"), NOW)
            assert [t.id for t in other["s1"]] == ["by-ann-dan"]
            # The same maker's again (a link carol minted for herself with ann's): kept.
            kept = await insert_client_token(connection, _claims("own", "carol", "ann"), NOW)
            assert kept == {}
            revoked = await insert_client_token(connection, _claims("admin", "carol"), NOW)
            assert sorted(t.id for t in revoked["s1"]) == ["by-ann", "own"]
        revoked_now = await AccessStore(store).revoked_tokens("s1", NOW)
        assert set(revoked_now) == {"by-ann", "by-ann-dan", "own"}
        audit = await AccessStore(store).list_audit("s1", limit=10, after=0)
        assert sorted((r.kind, r.actor, r.data["revoked"], r.data["made_by"]) for r in audit) == [
            ("token", "admin", "by-ann", "ann"),
            ("token", "admin", "by-ann-dan", "ann"),
            ("token", "admin", "own", "ann"),
        ]
        assert all("known another way" in r.data["reason"] for r in audit)
        await goes_down_and_up(store, config, "commands_0030", client_tokens, "made_by")
        await goes_down_and_up(store, config, "commands_0030", invites, "maker_epoch")
    finally:
        await store.close()


async def test_the_migration_of_prompts_link_tokens_goes_down_and_up(
    empty_database_url: str,
) -> None:
    """``entries_0032``: ``entries.token_claims`` (a prompt's link token, judged again when
    its run starts)."""
    await migration_goes_down_and_up(empty_database_url, "tokens_0031", entries, "token_claims")
