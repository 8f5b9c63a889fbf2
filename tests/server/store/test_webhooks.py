"""The webhook outbox's heads: only a session's first unfinished delivery is claimed, and
the head moves on as deliveries finish, fail for good, are retried or deleted."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from alembic import command
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.server.store.db import alembic_config, create_engine
from parley.server.store.outbox import Attempt, Claimed, claim, next_due, record, retry
from parley.server.store.sessions import Store
from parley.server.store.tables import (
    session_events,
    webhook_attempts,
    webhook_deliveries,
    webhooks,
)
from parley.server.store.webhooks import (
    ACTIVE,
    DISABLED,
    PAUSED,
    PENDING,
    WaitingCap,
    change_webhook,
    create_webhook,
    delete_webhook,
    get_webhook,
    mark_full,
    not_full,
)
from parley.session.errors import Conflict
from parley.session.events import MemberJoined
from parley.session.webhook_lanes import Lanes
from tests.conftest import wait_for_a_lock_wait
from tests.server.store.conftest import migration_goes_down_and_up

LEASE_MS = 1000
OK = Attempt(0, 1, 204, None)
REFUSED = Attempt(0, 1, 500, None)


async def _subscribe(store: Store) -> str:
    async with store.transaction() as tx:
        hook = await create_webhook(tx.connection, "http://x/", ["member.added"], None, "k", 0)
    return hook.id


async def _joined(store: Store, session_id: str, *names: str) -> None:
    async with store.transaction() as tx:
        await tx.append_events(
            session_id, 1, [MemberJoined(n, "viewer", (), (), "admin") for n in names]
        )


async def _claim(store: Store, now: int) -> list[Claimed]:
    async with store.transaction() as tx:
        return await claim(tx.connection, now, LEASE_MS, 10)


async def _record(store: Store, delivery: Claimed, attempt: Attempt, retry_at: int | None) -> None:
    async with store.transaction() as tx:
        await record(tx.connection, delivery, attempt, retry_at=retry_at, failure_limit=100)


def _who(deliveries: list[Claimed]) -> list[tuple[str, str]]:
    """(session, member) of each delivery, ordered by session."""
    return sorted((d.session_id, json.loads(d.payload)["data"]["user_id"]) for d in deliveries)


async def test_each_session_sends_in_order_across_a_failure_and_its_retry(store: Store) -> None:
    await _subscribe(store)
    await _joined(store, "s1", "a", "b")
    await _joined(store, "s1", "c")
    await _joined(store, "s2", "x")
    first = await _claim(store, 10)
    assert _who(first) == [("s1", "a"), ("s2", "x")]  # one head per session
    a = next(d for d in first if d.session_id == "s1")
    await _record(store, a, REFUSED, retry_at=50)
    assert await _claim(store, 20) == []  # b waits behind a, a waits for its retry
    async with store.read() as connection:
        assert await next_due(connection) == 50
    (again,) = await _claim(store, 50)
    assert (again.id, again.attempts) == (a.id, 1)
    await _record(store, again, OK, retry_at=None)
    (b,) = await _claim(store, 60)
    assert _who([b]) == [("s1", "b")]
    await _record(store, b, OK, retry_at=None)
    (c,) = await _claim(store, 70)
    assert _who([c]) == [("s1", "c")]
    await _record(store, c, OK, retry_at=None)
    assert await _claim(store, 80) == []
    async with store.read() as connection:  # s2's x, still leased
        assert await next_due(connection) == 10 + LEASE_MS


async def test_giving_up_moves_the_head_and_a_manual_retry_goes_first(store: Store) -> None:
    hook = await _subscribe(store)
    await _joined(store, "s1", "a", "b", "c")
    (a,) = await _claim(store, 10)
    await _record(store, a, REFUSED, retry_at=None)  # failed for good
    (b,) = await _claim(store, 20)
    assert _who([b]) == [("s1", "b")]
    await _record(store, b, OK, retry_at=None)
    async with store.transaction() as tx:
        assert await retry(tx.connection, hook, int(a.id), 30)
    (again,) = await _claim(store, 30)  # before c, which came after it
    assert again.id == a.id
    await _record(store, again, OK, retry_at=None)
    (c,) = await _claim(store, 40)
    assert _who([c]) == [("s1", "c")]
    async with store.transaction() as tx:  # older than c, under way: b is the head again
        assert await retry(tx.connection, hook, int(b.id), 50)
    (b_again,) = await _claim(store, 60)
    assert b_again.id == b.id
    await _record(store, c, OK, retry_at=None)
    await _record(store, b_again, OK, retry_at=None)
    assert await _claim(store, 70) == []
    async with store.read() as connection:
        assert await next_due(connection) is None


async def test_the_retry_period_runs_from_the_first_attempt_not_the_wait(store: Store) -> None:
    """Review I2: a delivery's retry period ran from its event, so one held behind its
    session's failing head, or by a paused subscription, longer than the period got a
    single attempt. It runs from its first attempt; a resume starts a new one."""
    hook = await _subscribe(store)
    await _joined(store, "s1", "a", "b")
    (a,) = await _claim(store, 10)
    assert a.retry_from == 10  # its first attempt
    await _record(store, a, REFUSED, retry_at=5000)
    (a,) = await _claim(store, 5000)
    assert a.retry_from == 10  # a retry keeps the period
    await _record(store, a, REFUSED, retry_at=None)  # failed for good
    (b,) = await _claim(store, 9000)  # b waited behind a: its period starts now
    assert (_who([b]), b.retry_from) == ([("s1", "b")], 9000)
    await _record(store, b, REFUSED, retry_at=9500)
    async with store.transaction() as tx:
        await change_webhook(tx.connection, hook, {"status": PAUSED})
    await _joined(store, "s2", "x")
    assert await _claim(store, 10_000) == []  # held
    async with store.transaction() as tx:
        await change_webhook(tx.connection, hook, {"status": ACTIVE})
    resumed = await _claim(store, 90_000)  # long after: the wait spent none of either period
    assert sorted((_who([d])[0], d.retry_from) for d in resumed) == [
        (("s1", "b"), 90_000),
        (("s2", "x"), 90_000),
    ]
    for delivery in resumed:
        await _record(store, delivery, REFUSED, retry_at=95_000)
    async with store.transaction() as tx:  # set again, still active: the periods run on
        await change_webhook(tx.connection, hook, {"status": ACTIVE})
    again = await _claim(store, 95_000)
    assert {d.retry_from for d in again} == {90_000}
    async with store.transaction() as tx:  # a manual retry: a new period from its attempt
        assert await retry(tx.connection, hook, int(a.id), 96_000)
    for delivery in again:
        await _record(store, delivery, OK, retry_at=None)
    (a_again,) = await _claim(store, 99_000)
    assert (a_again.id, a_again.retry_from) == (a.id, 99_000)


async def test_a_deleted_subscription_leaves_the_others_heads(store: Store) -> None:
    gone = await _subscribe(store)
    kept = await _subscribe(store)
    await _joined(store, "s1", "a", "b")
    claimed = await _claim(store, 10)
    assert sorted(d.webhook_id for d in claimed) == sorted([gone, kept])
    async with store.transaction() as tx:
        assert await delete_webhook(tx.connection, gone)
    for delivery in claimed:  # the deleted one's attempt is dropped
        await _record(store, delivery, OK, retry_at=None)
    (b,) = await _claim(store, 20)
    assert (b.webhook_id, _who([b])) == (kept, [("s1", "b")])
    async with store.read() as connection:
        rows = await connection.execute(select(webhook_deliveries.c.webhook_id).distinct())
        assert [r.webhook_id for r in rows] == [kept]


async def test_a_paused_subscription_holds_at_most_its_cap_then_is_disabled(
    store: Store,
) -> None:
    store.subscriptions.cap = WaitingCap(3)
    paused = await _subscribe(store)
    async with store.transaction() as tx:
        await change_webhook(tx.connection, paused, {"status": PAUSED})
        other = await create_webhook(tx.connection, "http://y/", ["member.added"], ["s2"], "k", 0)
    await _joined(store, "s1", "a", "b")
    await _joined(store, "s1", "c", "d")  # past the cap: the session's write is stored all the same
    await _joined(store, "s1", "e")
    await _joined(store, "s2", "x", "y")  # another subscription is not held back
    async with store.read() as connection:
        rows = list(await connection.execute(select(webhook_deliveries).order_by("id")))
        hook = await get_webhook(connection, paused)
        stored = await connection.execute(select(func.count()).select_from(session_events))
        assert int(stored.scalar_one()) >= 7
    mine = [json.loads(r.payload)["data"]["user_id"] for r in rows if r.webhook_id == paused]
    assert mine == ["a", "b", "c"]  # the oldest kept, nothing past the cap
    assert [r.session_id for r in rows if r.webhook_id == other.id] == ["s2", "s2"]
    assert hook is not None and hook.status == DISABLED and hook.full_at is not None
    assert hook.disabled_reason is not None and "outbox full" in hook.disabled_reason
    d_at = next(int(r.at) for r in await _events(store, "s1") if r.data["user_id"] == "d")
    assert (hook.skipped_from, hook.skipped_to) == (d_at, None)  # d, the first not written
    async with store.transaction() as tx:  # resumed: it takes deliveries again
        resumed = await change_webhook(tx.connection, paused, {"status": ACTIVE}, 7)
    assert resumed is not None and (resumed.status, resumed.full_at) == (ACTIVE, None)
    assert (resumed.skipped_from, resumed.skipped_to) == (d_at, 7)  # kept: not acknowledged
    for delivery in await _claim(store, 10):
        await _record(store, delivery, OK, retry_at=None)
    await _joined(store, "s1", "f")
    async with store.read() as connection:
        found = await connection.execute(
            select(webhook_deliveries.c.payload)
            .where(
                webhook_deliveries.c.webhook_id == paused, webhook_deliveries.c.status == PENDING
            )
            .order_by(webhook_deliveries.c.id)
        )
        assert [json.loads(p)["data"]["user_id"] for p in found.scalars()] == ["b", "c", "f"]
    await _joined(store, "s1", "g")  # full again while active: g is dropped, it keeps sending
    async with store.read() as connection:
        hook = await get_webhook(connection, paused)
    assert hook is not None and hook.status == ACTIVE and hook.full_at is not None
    assert (hook.skipped_from, hook.skipped_to) == (d_at, None)  # the same range, open again
    for _ in range(2):  # b, then c: one left waiting, half the cap
        for delivery in await _claim(store, 20):
            async with store.transaction() as tx:
                await record(
                    tx.connection, delivery, OK, retry_at=None, failure_limit=100, cap=WaitingCap(3)
                )
    await _joined(store, "s1", "h")
    async with store.read() as connection:
        hook = await get_webhook(connection, paused)
        found = await connection.execute(
            select(webhook_deliveries.c.payload)
            .where(
                webhook_deliveries.c.webhook_id == paused, webhook_deliveries.c.status == PENDING
            )
            .order_by(webhook_deliveries.c.id)
        )
        assert [json.loads(p)["data"]["user_id"] for p in found.scalars()] == ["f", "h"]
    assert hook is not None and (hook.status, hook.full_at) == (ACTIVE, None)
    # Taken again when the attempt that drained it ended: g lies within the range.
    assert (hook.skipped_from, hook.skipped_to) == (d_at, OK.at + OK.latency_ms)


async def _events(store: Store, session_id: str) -> list[Any]:
    async with store.read() as connection:
        e = session_events.c
        rows = await connection.execute(
            select(e.at_ms, e.data).where(e.session_id == session_id).order_by(e.seq)
        )
        return [SimpleNamespace(at=r.at_ms, data=json.loads(r.data)) for r in rows]


async def test_a_skipped_range_is_forgotten_only_as_read_and_once_closed(store: Store) -> None:
    """``acknowledge_skipped`` names the ``skipped_to`` read: a range still open, or one
    reopened and closed again since (grown), is refused and kept, with nothing else of
    the change applied."""
    hook = await _subscribe(store)

    async def change(values: dict[str, Any], now: int = 0) -> Any:
        async with store.transaction() as tx:
            return await change_webhook(tx.connection, hook, values, now)

    async with store.transaction() as tx:
        await mark_full(tx.connection, {hook: (3, 100)}, 105)
    with pytest.raises(Conflict, match="still skipped since 100"):
        await change({"acknowledge_skipped": 0})
    async with store.transaction() as tx:
        await not_full(tx.connection, hook, 200)
        await mark_full(tx.connection, {hook: (3, 300)}, 305)  # again: the range runs on
        await not_full(tx.connection, hook, 400)
    with pytest.raises(Conflict, match="not this subscription's skipped_to"):
        await change({"acknowledge_skipped": 200, "status": PAUSED})
    async with store.read() as connection:
        kept = await get_webhook(connection, hook)
    assert kept is not None and (kept.status, kept.skipped_from, kept.skipped_to) == (
        ACTIVE,
        100,
        400,
    )
    done = await change({"acknowledge_skipped": 400})
    assert (done.skipped_from, done.skipped_to) == (None, None)
    paused = await change({"status": PAUSED}, 500)  # not full: no range begins or ends
    assert (paused.skipped_from, paused.skipped_to) == (None, None)


async def test_the_migration_of_skipped_ranges_goes_down_and_up(empty_database_url: str) -> None:
    """``webhooks_0033``: ``webhooks.skipped_from`` and ``skipped_to``."""
    await migration_goes_down_and_up(empty_database_url, "entries_0032", webhooks, "skipped_from")


# PostgreSQL only: SQLite writes one transaction at a time, so the race cannot happen there.
@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_a_delivery_enqueued_while_its_head_completes_is_claimed(
    store: Store, database_url: str
) -> None:
    """PostgreSQL writes both at once: the head's completion waits for the enqueue (or
    the other way round), so the new delivery becomes the head either way."""
    assert database_url.startswith("postgresql")
    await _subscribe(store)
    await _joined(store, "s1", "a")
    (a,) = await _claim(store, 10)
    enqueued = asyncio.Event()
    release = asyncio.Event()

    async def enqueue() -> None:
        async with store.transaction() as tx:
            await tx.append_events("s1", 1, [MemberJoined("b", "viewer", (), (), "admin")])
            enqueued.set()
            await release.wait()

    writer = asyncio.create_task(enqueue())
    await enqueued.wait()
    completing = asyncio.create_task(_record(store, a, OK, retry_at=None))
    await wait_for_a_lock_wait(store.engine)
    release.set()
    await asyncio.gather(writer, completing)
    (b,) = await _claim(store, 20)
    assert _who([b]) == [("s1", "b")]


async def _hook_row(connection: AsyncConnection, status: str) -> None:
    """A subscription ``wh`` written as a migration's test finds it (no store)."""
    await connection.execute(
        insert(webhooks).values(
            id="wh",
            url="http://x/",
            events="[]",
            secret="k",
            status=status,
            failures=0,
            created_at=0,
        )
    )


async def test_the_migration_gives_existing_deliveries_their_heads(
    empty_database_url: str,
) -> None:
    database_url = empty_database_url
    config = alembic_config(database_url)
    await asyncio.to_thread(command.upgrade, config, "webhooks_0013")
    engine = create_engine(database_url)
    d = webhook_deliveries.c
    rows = [  # (id, session, status): s1 delivered one, then two wait; s2 all delivered
        (1, "s1", "delivered"),
        (2, "s1", "pending"),
        (3, "s1", "pending"),
        (4, "s2", "delivered"),
        (5, "s3", "sending"),
    ]
    try:
        async with engine.begin() as connection:
            await _hook_row(connection, "active")
            for id_, session_id, status in rows:  # as the schema before had them: no head
                await connection.execute(
                    insert(webhook_deliveries).values(
                        id=id_,
                        webhook_id="wh",
                        session_id=session_id,
                        message_id=f"m{id_}",
                        type="t",
                        payload="{}",
                        status=status,
                        attempts=0,
                        next_at=0,
                        retry_from=0,
                        created_at=0,
                    )
                )
        await asyncio.to_thread(command.upgrade, config, "head")
        async with engine.connect() as connection:
            heads = await connection.execute(select(d.id).where(d.head).order_by(d.id))
            assert [h.id for h in heads] == [2, 5]
    finally:
        await engine.dispose()


async def test_the_migration_starts_no_period_for_unattempted_deliveries_and_keeps_attempts(
    empty_database_url: str,
) -> None:
    """``webhooks_0026``: a waiting delivery never attempted has no period under way; one
    attempted keeps its own. On SQLite the table is copied to drop NOT NULL, and its
    attempts (``ON DELETE CASCADE``) must survive the old copy's drop, both ways."""
    config = alembic_config(empty_database_url)
    await asyncio.to_thread(command.upgrade, config, "sessions_0025")
    engine = create_engine(empty_database_url)
    d = webhook_deliveries.c
    try:
        async with engine.begin() as connection:
            await _hook_row(connection, "paused")
            for id_, status, attempts in ((1, "pending", 1), (2, "pending", 0), (3, "failed", 1)):
                await connection.execute(
                    insert(webhook_deliveries).values(
                        id=id_,
                        webhook_id="wh",
                        session_id="s1",
                        message_id=f"m{id_}",
                        type="t",
                        payload="{}",
                        status=status,
                        attempts=attempts,
                        next_at=0,
                        retry_from=7,
                        created_at=5,
                        head=id_ == 1,
                    )
                )
            await connection.execute(
                insert(webhook_attempts).values(delivery_id=1, at=7, latency_ms=1, error="x")
            )

        async def stored() -> tuple[list[tuple[int, int | None]], list[int]]:
            async with engine.connect() as connection:
                rows = await connection.execute(select(d.id, d.retry_from).order_by(d.id))
                kept = await connection.execute(select(webhook_attempts.c.delivery_id))
                return [(r.id, r.retry_from) for r in rows], [a.delivery_id for a in kept]

        await asyncio.to_thread(command.upgrade, config, "head")
        assert await stored() == ([(1, 7), (2, None), (3, 7)], [1])
        await asyncio.to_thread(command.downgrade, config, "sessions_0025")
        assert await stored() == ([(1, 7), (2, 5), (3, 7)], [1])
    finally:
        await engine.dispose()


async def test_a_fair_claim_serves_the_proven_first_and_skips_the_full(store: Store) -> None:
    """``claim`` with the sender's lanes (``session.webhook_lanes``): the SQL ranks and
    leaves out what the pure rule says, on either database."""
    slow, ok = await _subscribe(store), await _subscribe(store)
    await _joined(store, "s1", "a")
    await _joined(store, "s2", "b")
    proven = Lanes(per_subscription=2, failing=1, proven=frozenset({ok}))
    async with store.transaction() as tx:
        first = await claim(tx.connection, 10, LEASE_MS, 2, proven)
    assert [d.webhook_id for d in first] == [ok, ok]  # its share, before the older hook's
    full = Lanes(2, 1, in_flight={ok: 2, slow: 1}, proven=frozenset({ok}))
    async with store.transaction() as tx:
        assert await claim(tx.connection, 10, LEASE_MS, 4, full) == []
        assert await next_due(tx.connection, full) == 10 + LEASE_MS  # ok's, leased
    async with store.transaction() as tx:
        rest = await claim(tx.connection, 10, LEASE_MS, 4, Lanes(2, 1, proven=frozenset({ok})))
    assert [d.webhook_id for d in rest] == [slow]  # one slot: not proven


def test_the_cap_counts_at_a_processs_first_write_then_once_an_eighth() -> None:
    """A process that restarted must not write an eighth more unchecked each time."""
    cap = WaitingCap(80)
    assert cap.count_due("w", 1)  # the first write of this process: counted
    assert [cap.count_due("w", 1) for _ in range(10)] == [False] * 9 + [True]
    assert cap.count_due("v", 1)  # each subscription its own


def test_a_full_subscriptions_drain_is_counted_at_its_first_send_then_once_an_eighth() -> None:
    """Counting a full subscription's backlog at every delivery sent cost up to the cap's
    index entries each (about 4 s of CPU to drain half of 10,000)."""
    cap = WaitingCap(80)
    assert cap.recount_due("w")  # the first sent since this process knew it full
    assert [cap.recount_due("w") for _ in range(10)] == [False] * 9 + [True]
    assert cap.recount_due("v")  # each subscription its own
    cap.keep_only({"v"})
    assert cap.recount_due("w")  # forgotten with its subscription: counted again at once
