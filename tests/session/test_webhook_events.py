"""Which subscriptions an event goes to, and the body and id each delivery carries."""

from __future__ import annotations

import json

from parley.session.webhook_events import (
    Subscription,
    message_id,
    outgoing,
    timestamp_ms,
    webhook_types,
)


def test_an_event_goes_to_the_subscriptions_that_want_its_type_and_session() -> None:
    subs = [
        Subscription("a", frozenset({"reply.completed"}), None),
        Subscription("b", frozenset({"reply.completed"}), frozenset({"s2"})),
        Subscription("c", frozenset({"prompt.accepted"}), None),
    ]
    found = outgoing(subs, "s1", 7, 0, "reply.completed", {"reply_id": "r"})
    assert [o.webhook_id for o in found] == ["a"]
    assert json.loads(found[0].payload) == {
        "type": "reply.completed",
        "timestamp": "1970-01-01T00:00:00.000Z",
        "data": {"session_id": "s1", "event_seq": 7, "reply_id": "r"},
    }
    assert found[0].message_id == message_id("a", "s1", 7, "reply.completed")
    both = outgoing(subs, "s2", 8, 0, "reply.completed", {})
    assert [o.webhook_id for o in both] == ["a", "b"]
    assert outgoing(subs, "s1", 9, 0, "run.failed", {}) == []


def test_a_timestamp_always_has_milliseconds() -> None:
    """Review RC (note): ``isoformat`` gave ``…:03Z`` at a whole second and
    ``…:01.664000Z`` otherwise; a receiver parsing one form failed on the other."""
    at = 1_796_631_063_000  # 2026-12-07T08:11:03 UTC, millisecond 0
    assert timestamp_ms(at) == "2026-12-07T08:11:03.000Z"
    assert timestamp_ms(at - 1_336) == "2026-12-07T08:11:01.664Z"
    assert timestamp_ms(at + 7) == "2026-12-07T08:11:03.007Z"
    (sent,) = outgoing(
        [Subscription("a", frozenset({"run.failed"}), None)], "s", 1, at, "run.failed", {}
    )
    assert json.loads(sent.payload)["timestamp"] == "2026-12-07T08:11:03.000Z"


def test_message_ids_differ_per_event_and_subscription() -> None:
    ids = {
        message_id(w, s, n, t)
        for w in ("a", "b")
        for s in ("s1", "s2")
        for n in (0, 1)
        for t in ("session.created", "session.deleted")
    }
    assert len(ids) == 16


def test_a_run_failed_for_quota_is_also_told_as_quota_exceeded() -> None:
    assert webhook_types("run_failed", {"reason_code": "quota_exceeded"}) == [
        "run.failed",
        "quota.exceeded",
    ]
    assert webhook_types("run_failed", {"reason_code": "timeout"}) == ["run.failed"]
    assert webhook_types("member_joined", {}) == ["member.added"]
    assert webhook_types("run_started", {}) == []
