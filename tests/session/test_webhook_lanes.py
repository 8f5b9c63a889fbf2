"""The fair claim of webhook deliveries (``session.webhook_lanes``): classes, caps, slots."""

from __future__ import annotations

from dataclasses import dataclass, replace

from parley.session.webhook_lanes import (
    CLEAN_AFTER,
    SLOW_AFTER_S,
    SLOW_PER_SLOT,
    Lanes,
    Standing,
    free_slots,
    pick,
)


@dataclass(frozen=True)
class Head:
    webhook_id: str
    failing: bool = False
    n: int = 0


def ids(taken: list[Head]) -> list[tuple[str, int]]:
    return [(h.webhook_id, h.n) for h in taken]


def test_proven_subscriptions_go_first_then_unknown_then_failing() -> None:
    due = [Head("dead", failing=True), Head("new"), Head("ok")]
    lanes = Lanes(per_subscription=2, failing=2, proven=frozenset({"ok"}))
    assert ids(pick(due, lanes, 3)) == [("ok", 0), ("new", 0), ("dead", 0)]
    assert ids(pick(due, lanes, 1)) == [("ok", 0)]


def test_a_proven_subscription_takes_its_share_and_any_other_one_slot() -> None:
    due = [Head(w, n=i) for i in range(4) for w in ("ok", "new")]
    lanes = Lanes(per_subscription=3, failing=2, proven=frozenset({"ok"}))
    # Its share, one for the other, then what is left over back to the proven one.
    assert ids(pick(due, lanes, 8)) == [("ok", 0), ("ok", 1), ("ok", 2), ("new", 0), ("ok", 3)]
    assert ids(pick(due, lanes, 4)) == [("ok", 0), ("ok", 1), ("ok", 2), ("new", 0)]
    busy = Lanes(3, 2, in_flight={"ok": 2, "new": 1}, proven=frozenset({"ok"}))
    assert ids(pick(due, busy, 8)) == [("ok", 0), ("ok", 1), ("ok", 2), ("ok", 3)]
    assert busy.full == frozenset({"new"})  # a proven one may still take what is left


def test_a_lone_subscription_is_held_back_only_until_it_answers() -> None:
    due = [Head("hook", n=i) for i in range(6)]
    unknown = Lanes(per_subscription=2, failing=2)
    assert ids(pick(due, unknown, 4)) == [("hook", 0)]
    proven = Lanes(per_subscription=2, failing=2, proven=frozenset({"hook"}))
    assert len(pick(due, proven, 4)) == 4  # every free slot


def test_the_failing_share_a_few_slots_one_each() -> None:
    due = [Head(f"dead{i}", failing=True, n=j) for j in range(2) for i in range(4)]
    lanes = Lanes(per_subscription=4, failing=2)
    assert ids(pick(due, lanes, 8)) == [("dead0", 0), ("dead1", 0)]
    one_in_flight = Lanes(4, 2, in_flight={"dead0": 1}, failing_ids=frozenset({"dead0"}))
    assert ids(pick(due, one_in_flight, 8)) == [("dead1", 0)]
    assert one_in_flight.full == frozenset({"dead0"}) and not one_in_flight.failing_full
    two = Lanes(4, 2, in_flight={"dead0": 1, "dead1": 1}, failing_ids=frozenset({"dead0", "dead1"}))
    assert two.failing_full and pick(due, two, 8) == []


def test_an_attempt_waiting_long_stops_counting_against_the_slots() -> None:
    now = 100.0
    assert free_slots(4, [], now) == 4
    assert free_slots(4, [now - 0.1, now - 0.5], now) == 2
    slow = [now - SLOW_AFTER_S] * 3
    assert free_slots(4, [*slow, now], now) == 3  # the slow ones do not count
    many_slow = [now - SLOW_AFTER_S] * (SLOW_PER_SLOT * 4 + 2)
    assert free_slots(4, many_slow, now) == 2  # past their allowance they count again
    assert free_slots(4, [*many_slow, now, now, now], now) == 0


def test_a_subscription_failing_every_other_time_is_never_proven() -> None:
    """Review (bounded): 99 receivers that answered every other attempt and hung the rest
    were proven at each success, each holding a share of the slots, and held a healthy
    receiver 8 s back. Proven again only after ``CLEAN_AFTER`` successes in a row."""
    standing = Standing(max_kept=10)
    for n in range(20):
        standing.record("flaky", ok=n % 2 == 0)
        standing.record("healthy", ok=True)
        assert "flaky" not in standing.proven or n == 0
        assert "healthy" in standing.proven
    for _ in range(CLEAN_AFTER - 1):
        standing.record("flaky", ok=True)
        assert "flaky" not in standing.proven
    standing.record("flaky", ok=True)
    assert "flaky" in standing.proven


def test_standing_forgets_the_oldest_past_its_bound() -> None:
    standing = Standing(max_kept=2)
    for name in ("a", "b", "c"):
        standing.record(name, ok=True)
    assert standing.proven == {"b", "c"}


def test_slots_are_kept_for_subscriptions_in_good_standing() -> None:
    """When others hold every slot, a share is kept for subscriptions none of whose
    attempts failed lately: the claim then takes only theirs."""
    owed = frozenset({"flaky", "dead"})
    lanes = Lanes.of(16, {"flaky": 1, "dead": 1}, frozenset(), frozenset({"ok"}), owed)
    assert lanes.reserved == 4
    clean = replace(lanes, clean_only=True)
    due = [Head("flaky"), Head("dead"), Head("new"), Head("ok")]
    assert ids(pick(due, clean, 4)) == [("ok", 0), ("new", 0)]
    busy = Lanes.of(16, {"ok": 4}, frozenset(), frozenset({"ok"}))
    assert busy.reserved == 0
