"""Semantic events in the store: numbered per session in the writing transaction."""

from __future__ import annotations

import asyncio

import pytest

from parley.authz.policy import Decision
from parley.authz.roles import Member
from parley.authz.standard_webhooks import new_secret
from parley.server.store.outbox import Attempt, claim, list_deliveries, prune, record
from parley.server.store.sessions import MemberRow, Store
from parley.server.store.webhooks import create_webhook
from parley.session.events import (
    MemberChanged,
    MemberJoined,
    MemberLeft,
    MessagePosted,
    PromptAccepted,
    SettingsChanged,
)


async def test_events_are_numbered_per_session_from_one(store: Store) -> None:
    async with store.transaction() as tx:
        assert await tx.append_events(
            "s1", 10, [PromptAccepted("p1", 1, "a"), MessagePosted("m1", 2, "a")]
        ) == [1, 2]
        assert await tx.append_events("s2", 11, [PromptAccepted("p2", 1, "b")]) == [1]
    async with store.transaction() as tx:
        assert await tx.append_events("s1", 12, [PromptAccepted("p3", 3, "a")]) == [3]
    events = await store.events_after("s1", 0, 100)
    assert [(e.seq, e.at_ms, e.kind, e.actor) for e in events] == [
        (1, 10, "prompt_accepted", "a"),
        (2, 10, "message_posted", "a"),
        (3, 12, "prompt_accepted", "a"),
    ]
    assert [e.event() for e in events][2] == PromptAccepted("p3", 3, "a")
    assert [e.seq for e in await store.events_after("s1", 1, 1)] == [2]
    assert [e.event() for e in await store.events_after("s2", 0, 10)] == [
        PromptAccepted("p2", 1, "b")
    ]


async def test_a_rolled_back_write_leaves_no_event_and_no_gap(store: Store) -> None:
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.append_events("s1", 1, [PromptAccepted("lost", 1, "a")])
            raise RuntimeError("the change failed")
    assert await store.events_after("s1", 0, 10) == []
    async with store.transaction() as tx:
        assert await tx.append_events("s1", 2, [PromptAccepted("kept", 1, "a")]) == [1]


async def test_concurrent_writers_get_one_order_without_gaps(store: Store) -> None:
    async def write(n: int) -> list[int]:
        async with store.transaction() as tx:
            return await tx.append_events("s1", n, [PromptAccepted(f"p{n}", n, "a")] * 2)

    numbers = await asyncio.gather(*(write(n) for n in range(12)))
    assert sorted(s for pair in numbers for s in pair) == list(range(1, 25))
    assert all(pair[1] == pair[0] + 1 for pair in numbers)  # one write's events stay together
    stored = await store.events_after("s1", 0, 100)
    assert [e.seq for e in stored] == list(range(1, 25))
    by_seq = {e.seq: e.data["prompt_id"] for e in stored}
    for n, pair in enumerate(numbers):
        assert by_seq[pair[0]] == by_seq[pair[1]] == f"p{n}"


def _allow(before: MemberRow | None, actor: MemberRow | None) -> Decision:
    return Decision(True, "test")


async def test_membership_changes_record_their_events(store: Store) -> None:
    await store.change_member("s1", "u", Member("u", "editor"), 5, _allow)
    await store.change_member("s1", "u", Member("u", "editor"), 6, _allow)  # no change
    await store.change_member(
        "s1", "u", Member("u", "viewer", denials=frozenset({"pin"})), 7, _allow, "o"
    )
    refused = await store.change_member("s1", "u", None, 8, lambda b, a: Decision(False, "no"), "o")
    assert not refused.decision.allowed
    await store.change_member("s1", "u", None, 9, _allow)
    gone = await store.change_member("s1", "u", None, 10, _allow)  # no member any more
    assert gone.before is None and gone.after is None
    events = await store.events_after("s1", 0, 10)
    assert [(e.seq, e.at_ms) for e in events] == [(1, 5), (2, 7), (3, 9)]
    assert [e.event() for e in events] == [
        MemberJoined("u", "editor", (), (), "admin"),
        MemberChanged("u", "viewer", (), ("pin",), "o"),
        MemberLeft("u", "admin"),
    ]


async def test_settings_changes_record_only_what_changed(store: Store) -> None:
    changed = await store.change_settings("s1", {"title": "t", "model": "m"}, 3, "admin")
    assert changed == {"model": "m"}
    assert await store.change_settings("s1", {"model": "m"}, 4, "admin") == {}
    row = await store.get_session("s1")
    assert row is not None and row.model == "m"
    events = await store.events_after("s1", 0, 10)
    assert [e.event() for e in events] == [SettingsChanged({"model": "m"}, "admin")]


async def test_deleting_a_session_deletes_its_events(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.append_events("s1", 1, [PromptAccepted("p", 1, "a")])
    assert await store.delete_session("s1", 2)
    assert await store.events_after("s1", 0, 10) == []


async def test_webhook_deliveries_are_written_with_their_events_and_pruned(store: Store) -> None:
    async with store.transaction() as tx:
        hook = await create_webhook(
            tx.connection, "http://x/", ["member.added"], ["s1"], new_secret(), 0
        )
    async with store.transaction() as tx:
        await tx.append_events("s1", 5, [MemberJoined("u", "viewer", (), (), "admin")])
        await tx.append_events("s2", 5, [MemberJoined("u", "viewer", (), (), "admin")])
        assert tx.outboxed == 1  # s2 is not among the hook's sessions
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.append_events("s1", 6, [MemberJoined("v", "viewer", (), (), "admin")])
            raise RuntimeError("rolled back: no delivery either")
    async with store.transaction() as tx:
        (claimed,) = await claim(tx.connection, 10, 1000, 10)
        await record(
            tx.connection, claimed, Attempt(10, 3, 204, None), retry_at=None, failure_limit=3
        )
    async with store.read() as connection:
        ((row, attempts),) = await list_deliveries(connection, hook.id, 0, 10)
    assert (row.type, row.status, row.session_id) == ("member.added", "delivered", "s1")
    assert [(a.response_code, a.latency_ms) for a in attempts] == [(204, 3)]
    async with store.transaction() as tx:
        assert await prune(tx.connection, 5) == 0  # made at 5: not before it
        assert await prune(tx.connection, 6) == 1
    async with store.read() as connection:
        assert await list_deliveries(connection, hook.id, 0, 10) == []
