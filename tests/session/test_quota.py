from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from parley.session.model import Usage
from parley.session.quota import (
    Quotas,
    day_of,
    over_quota,
    reset_in_s,
    resets_at_ms,
    shares,
)


def test_the_quotas_start_over_at_the_next_utc_midnight_in_milliseconds() -> None:
    assert resets_at_ms(0) == 86_400_000
    assert resets_at_ms(1_764_115_199_999) == 1_764_115_200_000
    assert resets_at_ms(1_764_115_200_000) == 1_764_201_600_000  # midnight: the next one


@given(st.integers(0, 10**13))
def test_the_time_told_is_the_wait_told_from_the_same_moment(epoch_ms: int) -> None:
    assert resets_at_ms(epoch_ms) == epoch_ms + round(reset_in_s(epoch_ms / 1000) * 1000)


def test_day_is_the_utc_date() -> None:
    assert day_of(0) == "1970-01-01"
    assert day_of(1_764_115_199.9) == "2025-11-25"
    assert day_of(1_764_115_200) == "2025-11-26"


@given(
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=6),
)
def test_shares_add_up_to_the_whole_and_differ_by_at_most_one(
    tokens_in: int, tokens_out: int, issuers: list[str]
) -> None:
    split = shares(Usage(tokens_in, tokens_out), issuers)
    assert [p for p, _ in split] == list(dict.fromkeys(issuers))
    if split:
        assert sum(u.input_tokens for _, u in split) == tokens_in
        assert sum(u.output_tokens for _, u in split) == tokens_out
        ins = [u.input_tokens for _, u in split]
        assert max(ins) - min(ins) <= 1


def test_over_quota_names_who_is_over() -> None:
    quotas = Quotas(session_tokens_per_day=1000, user_tokens_per_day=300)
    assert over_quota(quotas, 999, {"alice": 299}, ["alice"]) is None
    assert (
        over_quota(quotas, 1000, {}, ["alice"])
        == "the session reached its quota of 1000 tokens today"
    )
    reason = over_quota(quotas, 500, {"alice": 10, "bob": 300}, ["alice", "bob"])
    assert reason == "bob reached their quota of 300 tokens today"
    assert over_quota(Quotas(), 10**12, {"alice": 10**12}, ["alice"]) is None


def test_a_days_quotas_reset_at_the_next_utc_midnight() -> None:
    """FX69: how long a quota refusal tells a client to wait (``retry_after_ms``)."""
    day = 86_400
    assert reset_in_s(3 * day) == day  # at midnight: the whole day ahead
    assert reset_in_s(3 * day + 20.5 * 3_600) == 3.5 * 3_600
    assert reset_in_s(4 * day - 0.25) == 0.25
    assert day_of(3 * day + 20.5 * 3_600 + reset_in_s(3 * day + 20.5 * 3_600)) == day_of(4 * day)
