"""Token usage and quotas in the database: what each call cost each issuer, per UTC day.

The decisions (who pays, who is over) are ``session.quota``'s; this module reads and
writes the rows they need.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import and_, delete, func, insert, select

from server.store.sessions import Store
from server.store.tables import model_usage, quotas
from session.errors import QuotaExceeded
from session.model import Usage
from session.quota import Quotas, day_of, over_quota, shares


@dataclass(frozen=True, slots=True)
class UserUsage:
    user_id: str
    input_tokens: int
    output_tokens: int
    calls: int


class UsageLedger:
    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    def today(self) -> str:
        return day_of(self.clock())

    async def record(
        self, session_id: str, issuers: Sequence[str], model: str, reply_id: str, usage: Usage
    ) -> None:
        """Store one call's usage, one row per issuer with their share."""
        now = self.clock()
        rows = [
            {
                "session_id": session_id,
                "user_id": user_id,
                "day": day_of(now),
                "model": model,
                "reply_id": reply_id,
                "input_tokens": share.input_tokens,
                "output_tokens": share.output_tokens,
                "created_at": int(now * 1000),
            }
            for user_id, share in shares(usage, issuers)
        ]
        if rows:
            async with self.store.transaction() as tx:
                await tx.connection.execute(insert(model_usage), rows)

    async def by_user(
        self, session_id: str, day: str, user_id: str | None = None
    ) -> list[UserUsage]:
        """Each user's tokens and calls on ``day`` (one user's when ``user_id`` is given)."""
        where = [model_usage.c.session_id == session_id, model_usage.c.day == day]
        if user_id is not None:
            where.append(model_usage.c.user_id == user_id)
        query = (
            select(
                model_usage.c.user_id,
                func.sum(model_usage.c.input_tokens),
                func.sum(model_usage.c.output_tokens),
                func.count(),
            )
            .where(and_(*where))
            .group_by(model_usage.c.user_id)
            .order_by(model_usage.c.user_id)
        )
        async with self.store.read() as connection:
            rows = (await connection.execute(query)).all()
        return [UserUsage(str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]

    async def quotas(self, session_id: str) -> Quotas:
        # A read, not a write transaction: it must not queue behind SQLite's writers.
        async with self.store.read() as connection:
            row = (
                await connection.execute(select(quotas).where(quotas.c.session_id == session_id))
            ).first()
        if row is None:
            return Quotas()
        return Quotas(row.session_tokens_per_day, row.user_tokens_per_day)

    async def set_quotas(self, session_id: str, limits: Quotas) -> None:
        async with self.store.transaction() as tx:
            await tx.connection.execute(delete(quotas).where(quotas.c.session_id == session_id))
            await tx.connection.execute(
                insert(quotas).values(
                    session_id=session_id,
                    session_tokens_per_day=limits.session_tokens_per_day,
                    user_tokens_per_day=limits.user_tokens_per_day,
                )
            )

    async def admit(self, session_id: str, issuers: Sequence[str]) -> None:
        """Raise ``QuotaExceeded`` when a call for ``issuers`` would go over a quota."""
        limits = await self.quotas(session_id)
        if limits == Quotas():
            return
        used = {
            u.user_id: u.input_tokens + u.output_tokens
            for u in await self.by_user(session_id, self.today())
        }
        reason = over_quota(limits, sum(used.values()), used, issuers)
        if reason is not None:
            raise QuotaExceeded(reason)
