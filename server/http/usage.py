"""Admin routes for model usage and token quotas: ``/api/v1/sessions/{id}/usage|quotas``."""

from __future__ import annotations

from parley.server.http.resource_models import QuotasOut, QuotasPut, UsageOut, UserUsageOut
from parley.server.http.rest import Operation, QueryStr
from parley.server.http.sessions import USER_ID, session_row
from parley.server.state import AppState
from parley.server.store.usage import UsageLedger
from parley.session.quota import Quotas

# A day of the calendar as ``datetime.date`` takes one, YYYY-MM-DD (years 0001-9999): each
# month's length and the leap years said in the pattern, so the API document admits no day
# the server refuses (review RP-1: ``?day=0000-00-00`` matched ``\d{4}-\d{2}-\d{2}``, 422).
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)"
DAY = (
    r"(?!0000)(?:[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    rf"|{_LEAP_YEAR}-02-29)"
)


def _ledger(state: AppState) -> UsageLedger:
    return UsageLedger(state.store, state.clock)


def _quotas_out(quotas: Quotas) -> QuotasOut:
    return QuotasOut(
        session_tokens_per_day=quotas.session_tokens_per_day,
        user_tokens_per_day=quotas.user_tokens_per_day,
    )


async def get_usage(
    state: AppState, session_id: str, user_id: str | None, day: str | None
) -> UsageOut:
    """Tokens used on ``day`` (UTC; default today), per user (or one user's)."""
    await session_row(state, session_id)
    ledger = _ledger(state)
    day = ledger.today() if day is None else day  # a day of the calendar (``DAY``)
    users = await ledger.by_user(session_id, day, user_id)
    return UsageOut(
        session_id=session_id,
        day=day,
        input_tokens=sum(u.input_tokens for u in users),
        output_tokens=sum(u.output_tokens for u in users),
        users=[
            UserUsageOut(
                user_id=u.user_id,
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                calls=u.calls,
            )
            for u in users
        ],
        quotas=_quotas_out(await ledger.quotas(session_id)),
    )


async def get_quotas(state: AppState, session_id: str) -> QuotasOut:
    await session_row(state, session_id)
    return _quotas_out(await _ledger(state).quotas(session_id))


async def put_quotas(state: AppState, session_id: str, body: QuotasPut) -> QuotasOut:
    """Replace the session's daily token quotas (checked before each model call), in force
    where the session runs when this returns."""
    await session_row(state, session_id)
    ledger = _ledger(state)
    await ledger.set_quotas(
        session_id, Quotas(body.session_tokens_per_day, body.user_tokens_per_day)
    )
    await state.rooms.settings_changed(await state.rooms.get(session_id))
    return _quotas_out(await ledger.quotas(session_id))


OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/usage",
        get_usage,
        "Tokens used on a day, per user (summary calls: by the run's issuers)",
        response=UsageOut,
        errors=(404,),
        query_str=(
            QueryStr("user_id", required=False, pattern=USER_ID.pattern),
            QueryStr(
                "day",
                max_length=10,
                required=False,
                pattern=DAY,
                format="date",
                form="a date, YYYY-MM-DD",
            ),
        ),
    ),
    Operation(
        "GET",
        "/api/v1/sessions/{session_id}/quotas",
        get_quotas,
        "The session's daily token quotas",
        response=QuotasOut,
        errors=(404,),
    ),
    Operation(
        "PUT",
        "/api/v1/sessions/{session_id}/quotas",
        put_quotas,
        "Set the session's daily token quotas (per session and per member)",
        body=QuotasPut,
        response=QuotasOut,
        errors=(404,),
    ),
]
