"""The one back-off formula: doubling from the base, capped, never overflowing."""

from __future__ import annotations

from parley.session.backoff import doubling_s


def test_it_doubles_from_the_base_up_to_the_maximum() -> None:
    assert [doubling_s(0.5, 8.0, n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_any_number_of_attempts_stays_at_the_maximum() -> None:
    assert doubling_s(5.0, 3600.0, 1025) == 3600.0  # 2.0 ** 1024 would overflow
    assert doubling_s(5.0, 3600.0, 10**9) == 3600.0
