"""Token quotas per day: who pays for a call, and whether a call may start.

A call's tokens (input plus output) are shared among its issuers, so a coalesced run that
answers two people's prompts charges each half; a quota counts both directions.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from parley.session.model import Usage

DAY_S = 86_400  # a UTC day (POSIX time counts no leap seconds)
DAY_MS = DAY_S * 1000


@dataclass(frozen=True, slots=True)
class Quotas:
    """Tokens a day (UTC); None is no limit. ``user_tokens_per_day`` holds for each member."""

    session_tokens_per_day: int | None = None
    user_tokens_per_day: int | None = None


def day_of(epoch_s: float) -> str:
    """The UTC day a moment falls on, as ``YYYY-MM-DD``."""
    return datetime.datetime.fromtimestamp(epoch_s, datetime.UTC).date().isoformat()


def reset_in_s(epoch_s: float) -> float:
    """Seconds from ``epoch_s`` to the next UTC midnight, when the day's quotas start over:
    the wait a quota refusal tells (``retry_after_ms``)."""
    return DAY_S - epoch_s % DAY_S


def resets_at_ms(epoch_ms: int) -> int:
    """The next UTC midnight after ``epoch_ms``, in milliseconds since the epoch: when a
    prompt a quota failed then may be sent again (``retry_at``). The same moment as
    ``reset_in_s`` counts to, told as a time, not a wait: a failure is read long after it
    was told (a transcript, a webhook retried, a replayed event stream), and a time stays
    true where a wait would have run down."""
    return (epoch_ms // DAY_MS + 1) * DAY_MS


def shares(usage: Usage, issuers: Sequence[str]) -> list[tuple[str, Usage]]:
    """``usage`` split among the distinct ``issuers``; the first ones take the remainders,
    so the shares add up to the whole."""
    people = list(dict.fromkeys(issuers))
    if not people:
        return []
    n = len(people)
    result = []
    for index, person in enumerate(people):
        result.append(
            (
                person,
                Usage(
                    usage.input_tokens // n + (index < usage.input_tokens % n),
                    usage.output_tokens // n + (index < usage.output_tokens % n),
                ),
            )
        )
    return result


def over_quota(
    quotas: Quotas, session_used: int, used_by: Mapping[str, int], issuers: Sequence[str]
) -> str | None:
    """Why a call for ``issuers`` may not start today, or None. ``used_by`` holds the
    tokens each issuer used today, ``session_used`` the session's total."""
    over = session_over_quota(quotas, session_used)
    if over is not None:
        return over
    return next(iter(issuers_over_quota(quotas, used_by, issuers).values()), None)


def session_over_quota(quotas: Quotas, session_used: int) -> str | None:
    """Why the session may make no call today (``session_used`` tokens so far), or None."""
    limit = quotas.session_tokens_per_day
    if limit is not None and session_used >= limit:
        # Not how many: the total holds what every member's calls read, restricted
        # material and private side-threads too (review RC-1), and the reason is shown
        # to every member.
        return f"the session reached its quota of {limit} tokens today"
    return None


def issuers_over_quota(
    quotas: Quotas, used_by: Mapping[str, int], issuers: Sequence[str]
) -> dict[str, str]:
    """The distinct ``issuers`` at their own daily quota, each with why (in their order);
    ``used_by`` holds the tokens each used today."""
    limit = quotas.user_tokens_per_day
    if limit is None:
        return {}
    over = {}
    for issuer in dict.fromkeys(issuers):
        used = used_by.get(issuer, 0)
        if used >= limit:
            over[issuer] = f"{issuer} reached their quota of {limit} tokens today"
    return over
