"""The capacity search: which session counts it tries, and when a step passes."""

from __future__ import annotations

from bench.capacity import CapacityPlan, next_count, passed

PLAN = CapacityPlan(start=10, ceiling=640, resolution=0.125)


def search(limit: int, plan: CapacityPlan = PLAN) -> tuple[list[int], int]:
    """The counts tried against a server that passes up to ``limit`` sessions."""
    tried: list[int] = []
    passes, failure = 0, None
    while (count := next_count(passes, failure, plan)) is not None:
        tried.append(count)
        if count <= limit:
            passes = count
        else:
            failure = count
            if passes == 0:
                break
    return tried, passes


def test_it_doubles_then_bisects_to_within_the_resolution() -> None:
    tried, found = search(57)
    assert tried[:4] == [10, 20, 40, 80]
    assert tried[4:] == [60, 50, 55]  # 50 passes, 55 passes, gap 60 - 55 <= 55/8
    assert found == 55
    assert found <= 57 < found * (1 + PLAN.resolution) + 1


def test_a_server_past_the_ceiling_is_reported_at_the_ceiling() -> None:
    tried, found = search(10_000)
    assert tried == [10, 20, 40, 80, 160, 320, 640]
    assert found == 640


def test_a_server_failing_the_first_step_serves_none() -> None:
    assert search(3) == ([10], 0)


def test_small_counts_bisect_down_to_one() -> None:
    plan = CapacityPlan(start=1, ceiling=64, resolution=0.125)
    tried, found = search(5, plan)
    assert tried == [1, 2, 4, 8, 6, 5]
    assert found == 5


def test_a_step_passes_only_with_every_token_and_p99_under_the_limit() -> None:
    assert passed({"missing_fraction": 0.0, "delay_p99_ms": 99.9}, 100)
    assert not passed({"missing_fraction": 0.0, "delay_p99_ms": 100.0}, 100)
    assert not passed({"missing_fraction": 0.001, "delay_p99_ms": 1.0}, 100)
    assert not passed({"error": "TimeoutError: no sync step 2"}, 100)
