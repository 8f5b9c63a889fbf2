"""Token usage and quotas: what each call cost each issuer, per UTC day.

The decisions (who pays, who is over) are ``session.quota``'s; ``UsageLedger`` applies them
over any ``SessionStore``, and ``UsageTables`` is the database's half of those rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import delete, insert

from parley.server.store.database import Database
from parley.server.store.rows import UsageRow, quota_limits, usage_totals
from parley.server.store.tables import quotas
from parley.session.errors import QuotaExceeded
from parley.session.model import Usage
from parley.session.quota import Quotas, day_of, over_quota, reset_in_s, resets_at_ms, shares

if TYPE_CHECKING:
    from parley.server.store.port import SessionStore


@dataclass(frozen=True, slots=True)
class UserUsage:
    user_id: str
    input_tokens: int
    output_tokens: int
    calls: int


class UsageTables(Database):
    """The usage and quota rows in the database."""

    async def record_usage(self, rows: Sequence[UsageRow]) -> None:
        if rows:
            async with self.transaction() as tx:
                await tx.replace_usage(rows)

    async def usage_by_user(
        self, session_id: str, day: str, user_id: str | None = None
    ) -> list[UserUsage]:
        """Each user's tokens and calls on ``day`` (one user's when ``user_id`` is given),
        by user id."""
        async with self.read() as connection:
            rows = await usage_totals(connection, session_id, day, user_id)
        return [UserUsage(*row) for row in rows]

    async def quotas(self, session_id: str) -> Quotas:
        # A read, not a write transaction: it must not queue behind SQLite's writers.
        async with self.read() as connection:
            return await quota_limits(connection, session_id)

    async def set_quotas(self, session_id: str, limits: Quotas) -> None:
        async with self.transaction() as tx:
            await tx.connection.execute(delete(quotas).where(quotas.c.session_id == session_id))
            await tx.connection.execute(
                insert(quotas).values(
                    session_id=session_id,
                    session_tokens_per_day=limits.session_tokens_per_day,
                    user_tokens_per_day=limits.user_tokens_per_day,
                )
            )


def usage_rows(
    session_id: str,
    issuers: Sequence[str],
    model: str,
    reply_id: str,
    usage: Usage,
    now: float,
    *,
    estimated: bool = False,
) -> list[UsageRow]:
    """One call's usage at ``now`` (seconds), one row per issuer with their share."""
    return [
        UsageRow(
            session_id,
            user_id,
            day_of(now),
            model,
            reply_id,
            share.input_tokens,
            share.output_tokens,
            int(now * 1000),
            estimated,
        )
        for user_id, share in shares(usage, issuers)
    ]


class UsageLedger:
    def __init__(self, store: SessionStore, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    def today(self) -> str:
        return day_of(self.clock())

    async def by_user(
        self, session_id: str, day: str, user_id: str | None = None
    ) -> list[UserUsage]:
        """Each user's tokens and calls on ``day`` (one user's when ``user_id`` is given)."""
        return await self.store.usage_by_user(session_id, day, user_id)

    async def quotas(self, session_id: str) -> Quotas:
        return await self.store.quotas(session_id)

    async def set_quotas(self, session_id: str, limits: Quotas) -> None:
        await self.store.set_quotas(session_id, limits)

    def rows(
        self, session_id: str, issuers: Sequence[str], model: str, reply_id: str, usage: Usage
    ) -> list[UsageRow]:
        """One call's usage, one row per issuer with their share (to store with the run's
        finish)."""
        return usage_rows(session_id, issuers, model, reply_id, usage, self.clock())

    async def admit(
        self, session_id: str, issuers: Sequence[str], limits: Quotas | None = None
    ) -> None:
        """Raise ``QuotaExceeded`` when a call for ``issuers`` would go over a quota, with
        the wait until the quotas start over (the next UTC midnight) as its
        ``retry_after_s``; ``limits``: the session's quotas if already read (with the run's
        start)."""
        if limits is None:
            limits = await self.quotas(session_id)
        if limits == Quotas():
            return
        now = self.clock()  # one moment: the day counted, and the wait to its end
        used = {
            u.user_id: u.input_tokens + u.output_tokens
            for u in await self.by_user(session_id, day_of(now))
        }
        reason = over_quota(limits, sum(used.values()), used, issuers)
        if reason is not None:
            raise QuotaExceeded(reason, reset_in_s(now), resets_at_ms(int(now * 1000)))
