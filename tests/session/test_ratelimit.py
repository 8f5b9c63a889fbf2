"""Budgets: token buckets charged what a frame costs, per member or per socket."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from parley.session.ratelimit import (
    AbuseCounter,
    Budgets,
    Cost,
    KeyedBuckets,
    Rate,
    Spend,
    TokenBucket,
    answer_bytes,
    cost_of,
)
from parley.session.yprotocol import (
    AwarenessMessage,
    QueryAwarenessMessage,
    SyncMessage,
    SyncType,
)


def test_frames_cost_their_bytes_and_requests_for_state_are_counted() -> None:
    assert cost_of(SyncMessage(SyncType.UPDATE, b"x"), 900) == Cost(Spend.DOCUMENT_BYTES, 900)
    assert cost_of(SyncMessage(SyncType.STEP2, b"x"), 70) == Cost(Spend.DOCUMENT_BYTES, 70)
    assert cost_of(AwarenessMessage(b"x"), 50) == Cost(Spend.AWARENESS_BYTES, 50)
    # Four bytes may ask for the whole document: what is counted is the request.
    assert cost_of(SyncMessage(SyncType.STEP1, b"\x00"), 4) == Cost(Spend.SYNC_REQUESTS, 1)
    assert cost_of(QueryAwarenessMessage(), 1) == Cost(Spend.SYNC_REQUESTS, 1)


def test_a_byte_budget_refuses_past_its_burst_then_refills() -> None:
    budgets = Budgets({Spend.DOCUMENT_BYTES: Rate(per_second=100, burst=1000)})
    cost = Cost(Spend.DOCUMENT_BYTES, 400)
    assert budgets.allow("vera", cost, now=0)
    assert budgets.allow("vera", cost, now=0)
    assert not budgets.allow("vera", cost, now=0)
    assert budgets.allow("alice", cost, now=0)  # each member has their own
    assert budgets.allow("vera", cost, now=2.0)  # 200 bytes back


def test_a_frame_larger_than_the_burst_is_always_refused() -> None:
    budgets = Budgets({Spend.DOCUMENT_BYTES: Rate(per_second=1e6, burst=1000)})
    assert not budgets.allow("vera", Cost(Spend.DOCUMENT_BYTES, 1001), now=1e9)


def test_a_spend_without_a_rate_is_not_budgeted_at_that_level() -> None:
    per_socket = Budgets({Spend.SYNC_REQUESTS: Rate(per_second=0, burst=1)})
    assert per_socket.allow("s", Cost(Spend.AWARENESS_BYTES, 10**9), now=0)
    assert per_socket.allow("s", Cost(Spend.SYNC_REQUESTS, 1), now=0)
    assert not per_socket.allow("s", Cost(Spend.SYNC_REQUESTS, 1), now=100)


@settings(max_examples=100, deadline=None)
@given(
    st.floats(0, 1e4),
    st.integers(1, 10_000),
    st.lists(st.tuples(st.floats(0, 5), st.integers(0, 2000)), max_size=40),
)
def test_a_bucket_never_allows_more_than_burst_plus_rate_times_time(
    per_second: float, burst: int, events: list[tuple[float, int]]
) -> None:
    bucket = TokenBucket(Rate(per_second, burst), now=0)
    now = spent = 0.0
    for step, cost in events:
        now += step
        if bucket.allow(now, cost):
            spent += cost
        assert spent <= burst + per_second * now + 1e-6


def test_refusals_past_the_limit_within_the_window_cut_off() -> None:
    abuse = AbuseCounter(limit=2, window_s=10)
    assert not abuse.refused(0)
    assert not abuse.refused(1)
    assert abuse.refused(2)
    assert not AbuseCounter(limit=2, window_s=10).refused(100)


def test_a_bucket_says_how_long_until_it_has_room_again() -> None:
    bucket = TokenBucket(Rate(per_second=0.5, burst=2), now=0)
    assert bucket.wait_s(0) == 0.0
    assert bucket.allow(0) and bucket.allow(0) and not bucket.allow(0)
    assert bucket.wait_s(0) == 2.0 and bucket.wait_s(1.5) == 0.5
    assert bucket.wait_s(2) == 0.0 and bucket.allow(2)
    assert TokenBucket(Rate(per_second=0, burst=1), now=0).wait_s(0, cost=2) == float("inf")
    # FX59: a cost past the burst is never there, however long one waits.
    assert TokenBucket(Rate(per_second=1, burst=1), now=0).wait_s(0, cost=2) == float("inf")


def test_a_bucket_says_what_is_left_without_taking_it() -> None:
    bucket = TokenBucket(Rate(per_second=10.0, burst=100), now=0.0)
    bucket.spend(0.0, 60)
    assert bucket.left(0.0) == 40 and bucket.left(1.0) == 50 and bucket.left(9.0) == 100


def test_what_an_estimate_took_past_the_cost_is_given_back_up_to_a_full_bucket() -> None:
    """FX67: a first list of documents is paid an upper estimate, then settled."""
    budgets = Budgets({Spend.READ_BYTES: Rate(per_second=10.0, burst=100)})
    assert budgets.allow("vic", Cost(Spend.READ_BYTES, 90), 0.0)
    budgets.give_back("vic", Cost(Spend.READ_BYTES, 70), 0.0)  # it cost 20
    assert budgets.bucket("vic", Spend.READ_BYTES, 0.0).left(0.0) == 80
    budgets.give_back("vic", Cost(Spend.READ_BYTES, 70), 1.0)
    assert budgets.bucket("vic", Spend.READ_BYTES, 1.0).left(1.0) == 100  # never past it
    budgets.give_back("vic", Cost(Spend.COMMANDS, 5), 1.0)  # no rate: nothing to give back


def test_keyed_buckets_refuse_each_key_alone_and_keep_at_most_max_keys() -> None:
    keyed = KeyedBuckets(Rate(per_second=1, burst=2), max_keys=2)
    assert keyed.take("a", now=0) == 0.0 and keyed.take("a", now=0) == 0.0
    assert keyed.take("a", now=0) == 1.0  # nothing spent: a second to wait
    assert keyed.take("b", now=0) == 0.0  # each key its own
    assert keyed.take("a", now=1) == 0.0  # refilled
    keyed.take("c", now=1)  # "b" was used least lately: forgotten
    assert len(keyed) == 2
    assert keyed.take("a", now=1) == 1.0  # still known, and spent


def test_an_answer_costs_its_bytes_as_sent_not_its_characters() -> None:
    """Review FX21: one measure for every read (REST, a socket's greeting): UTF-8 bytes."""
    assert answer_bytes([]) == 0
    assert answer_bytes(["abc", b"\xff\x00"]) == 5
    assert answer_bytes(["漢字", "é", "😀"]) == 6 + 2 + 4
    assert answer_bytes([json.dumps("漢")]) == len('"\\u6f22"')  # escaped: six bytes and quotes
