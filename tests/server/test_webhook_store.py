"""The subscriptions an event write matches: kept in memory, read again only after a
change, made on this node or any other (two stores on one database stand for two nodes)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event, select

from parley.authz.standard_webhooks import new_secret
from parley.server.store.db import create_engine
from parley.server.store.sessions import Store
from parley.server.store.tables import webhook_deliveries
from parley.server.store.webhooks import change_webhook, create_webhook, delete_webhook
from parley.session.events import PromptAccepted


@pytest.fixture
async def nodes(database_url: str) -> AsyncIterator[tuple[Store, Store]]:
    one, two = Store(create_engine(database_url)), Store(create_engine(database_url))
    try:
        await one.create_session("s1", "t", "queue", 0)
        yield one, two
    finally:
        await one.close()
        await two.close()


@contextmanager
def statements(store: Store) -> Iterator[list[str]]:
    """Every SQL statement ``store`` sends while the block runs."""
    sent: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        sent.append(statement)

    engine = store.engine.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", seen)


async def write_event(store: Store, seq: int) -> None:
    async with store.transaction() as tx:
        await tx.append_events("s1", seq, [PromptAccepted(f"p{seq}", seq, "a")])


async def outbox(store: Store) -> list[tuple[str, str]]:
    d = webhook_deliveries
    async with store.read() as connection:
        rows = await connection.execute(select(d.c.webhook_id, d.c.type).order_by(d.c.id))
        return [(row.webhook_id, row.type) for row in rows]


def touching(sent: list[str], table: str) -> list[str]:
    return [s for s in sent if f"FROM {table}" in s or f"INTO {table}" in s]


async def test_an_event_write_without_subscribers_makes_no_extra_query(
    nodes: tuple[Store, Store],
) -> None:
    one, _ = nodes
    await write_event(one, 1)  # the first write reads the (empty) subscriptions once
    with statements(one) as sent:
        await write_event(one, 2)
    assert touching(sent, "webhooks") == [] and touching(sent, "webhook_deliveries") == []
    writes = [s for s in sent if s.lstrip().upper().startswith(("UPDATE", "INSERT"))]
    assert len(writes) == 2  # the event counter (with the version) and the event row
    assert one.subscriptions.reads == 1


async def test_a_change_on_another_node_is_in_force_for_the_next_event(
    nodes: tuple[Store, Store],
) -> None:
    one, two = nodes
    await write_event(one, 1)
    async with two.transaction() as tx:
        hook = await create_webhook(
            tx.connection, "http://127.0.0.1:9/", ["prompt.accepted"], None, new_secret(), 0
        )
    await write_event(one, 2)
    assert await outbox(one) == [(hook.id, "prompt.accepted")]
    with statements(one) as sent:  # unchanged since: the copy in memory serves
        await write_event(one, 3)
    assert touching(sent, "webhooks") == []
    assert len(await outbox(one)) == 2

    async with two.transaction() as tx:
        await change_webhook(tx.connection, hook.id, {"events": ["member.added"]})
    await write_event(one, 4)
    assert len(await outbox(one)) == 2  # no longer wanted
    async with two.transaction() as tx:
        await change_webhook(tx.connection, hook.id, {"events": ["prompt.accepted"]})
    await write_event(one, 5)
    assert len(await outbox(one)) == 3
    async with two.transaction() as tx:
        assert await delete_webhook(tx.connection, hook.id)
    await write_event(one, 6)  # a deleted subscription is no longer written to
    assert await outbox(one) == []
    assert one.subscriptions.reads == 5  # the first write, then once per change
