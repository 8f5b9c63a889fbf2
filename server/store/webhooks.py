"""Event webhook subscriptions: their rows, and the copy every event write matches.

The subscriptions an event write matches are kept in memory (``Subscriptions``) and read
again only when ``webhook_version`` moved: every change of a subscription, on any node,
counts it up in its own transaction, and an event write reads the counter in a statement
it makes anyway (``StoreTx.append_events``), so a change committed before an event is in
force for it on every node, and a write with no subscription makes no extra query. The
deliveries themselves are ``server.store.outbox``'s.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ScalarSelect, case, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.server.store.tables import (
    WAITING,
    webhook_attempts,
    webhook_deliveries,
    webhook_version,
    webhooks,
)
from parley.session.errors import Conflict
from parley.session.webhook_events import Subscription

ACTIVE, PAUSED, DISABLED = "active", "paused", "disabled"
PENDING, SENDING, DELIVERED, FAILED = "pending", "sending", "delivered", "failed"


@dataclass(frozen=True, slots=True)
class WebhookRow:
    id: str
    url: str
    events: tuple[str, ...]
    sessions: tuple[str, ...] | None
    secret: str
    status: str
    disabled_reason: str | None
    failures: int
    created_at: int
    full_at: int | None = None
    # ms: events from ``skipped_from`` to ``skipped_to`` (None: still skipping) were not
    # delivered to it, its outbox being full; kept until acknowledged (``change_webhook``).
    skipped_from: int | None = None
    skipped_to: int | None = None


def _ms(value: Any) -> int | None:
    return None if value is None else int(value)


def _webhook(row: Any) -> WebhookRow:
    sessions = None if row.sessions is None else tuple(json.loads(row.sessions))
    return WebhookRow(
        row.id,
        row.url,
        tuple(json.loads(row.events)),
        sessions,
        row.secret,
        row.status,
        row.disabled_reason,
        int(row.failures),
        int(row.created_at),
        _ms(row.full_at),
        _ms(row.skipped_from),
        _ms(row.skipped_to),
    )


# Built once: an event write reads it with every counter it takes (building the
# construct each time cost more than running it).
_VERSION_NOW = select(func.coalesce(func.max(webhook_version.c.version), 0)).scalar_subquery()


def version_now() -> ScalarSelect[Any]:
    """The subscriptions' version as a scalar subquery, to read inside another statement."""
    return _VERSION_NOW


async def _count_change(connection: AsyncConnection) -> None:
    """A subscription changed in this transaction: every node reads them again before its
    next event write that commits after this one."""
    await connection.execute(update(webhook_version).values(version=webhook_version.c.version + 1))


# The unfinished deliveries a subscription may hold by default (``webhook_max_waiting``).
MAX_WAITING = 10_000


class WaitingCap:
    """The cap on a subscription's unfinished deliveries, and how many this process wrote
    for each subscription since it last counted them.

    Counting a subscription's waiting deliveries costs up to ``limit`` index entries, so a
    process counts them at its first write for a subscription and then once per eighth of
    the cap it writes (at every write for a cap below 8): a subscription holds at most
    ``limit`` plus an eighth of it per node, however often nodes restart."""

    def __init__(self, limit: int = MAX_WAITING) -> None:
        self.limit = limit
        self.every = max(1, limit // 8)
        self._unchecked: dict[str, int] = {}
        # Deliveries sent of each full subscription since its backlog was last counted.
        self._drained: dict[str, int] = {}

    def count_due(self, webhook_id: str, adding: int) -> bool:
        """``adding`` deliveries are about to be written for ``webhook_id``: True when
        its waiting deliveries are to be counted first (the tally starts again)."""
        unchecked = self._unchecked.get(webhook_id, self.every) + adding
        if unchecked >= self.every:
            self._unchecked[webhook_id] = 0
            return True
        self._unchecked[webhook_id] = unchecked
        return False

    def recount_due(self, webhook_id: str) -> bool:
        """A delivery of ``webhook_id``, whose outbox is full, was sent: True when its
        waiting deliveries are to be counted again (at the first, then once per eighth of
        the cap sent), to see whether it takes deliveries again. (Counted at every one, a
        full subscription's drain cost up to the cap's index entries a delivery.)"""
        drained = self._drained.get(webhook_id, self.every - 1) + 1
        if drained >= self.every:
            self._drained[webhook_id] = 0
            return True
        self._drained[webhook_id] = drained
        return False

    def keep_only(self, webhook_ids: set[str]) -> None:
        """Forget the tallies of subscriptions deleted (at most ``max_webhooks`` kept)."""
        for tally in (self._unchecked, self._drained):
            for gone in tally.keys() - webhook_ids:
                del tally[gone]


class Subscriptions:
    """The subscriptions as of a version of ``webhook_version``, one copy per process.

    Safe across concurrent transactions: a copy is always read after the version it is
    stored under, so it is never older than that version (at worst newer, and then read
    again once a write sees the newer version)."""

    def __init__(self) -> None:
        self._version: int | None = None
        self._subscriptions: tuple[Subscription, ...] = ()
        self.reads = 0  # how often they were read from the store (for tests and metrics)
        self.cap = WaitingCap()

    def version_wanting_none(self, session_id: str, webhook_types: Sequence[str]) -> int | None:
        """The version of the subscriptions read here, if none of them wants any of
        ``webhook_types`` of the session (``-1``: none asked; None: some may want one, or
        nothing was read yet)."""
        if not webhook_types:
            return -1
        if self._version is None:
            return None
        for subscription in self._subscriptions:
            if any(subscription.wants(session_id, t) for t in webhook_types):
                return None
        return self._version

    async def current(
        self, connection: AsyncConnection, version: int | None = None
    ) -> tuple[Subscription, ...]:
        """The subscriptions in force at ``version`` (read in this transaction's statement
        that needed them; None: read it now)."""
        if version is None:
            version = int((await connection.execute(select(version_now()))).scalar_one())
        if version != self._version:
            rows = await connection.execute(
                select(webhooks.c.id, webhooks.c.events, webhooks.c.sessions, webhooks.c.full_at)
            )
            self._subscriptions = tuple(
                Subscription(
                    row.id,
                    frozenset(json.loads(row.events)),
                    None if row.sessions is None else frozenset(json.loads(row.sessions)),
                    full=row.full_at is not None,
                )
                for row in rows
            )
            self._version = version
            self.reads += 1
            self.cap.keep_only({s.id for s in self._subscriptions})
        return self._subscriptions


# -- subscriptions ------------------------------------------------------------------------


async def lock_subscriptions(connection: AsyncConnection) -> None:
    """PostgreSQL: hold the subscriptions' lock until the transaction ends, so that two
    creations cannot both count the subscriptions before either is stored (SQLite has one
    writer at a time anyway)."""
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('parley_webhooks'))"))


async def create_webhook(
    connection: AsyncConnection,
    url: str,
    events: Sequence[str],
    sessions: Sequence[str] | None,
    secret: str,
    now: int,
) -> WebhookRow:
    row = WebhookRow(
        "wh_" + secrets.token_hex(8),
        url,
        tuple(sorted(set(events))),
        None if sessions is None else tuple(sorted(set(sessions))),
        secret,
        ACTIVE,
        None,
        0,
        now,
    )
    await connection.execute(
        insert(webhooks).values(
            id=row.id,
            url=row.url,
            events=json.dumps(row.events),
            sessions=None if row.sessions is None else json.dumps(row.sessions),
            secret=secret,
            status=ACTIVE,
            failures=0,
            created_at=now,
        )
    )
    await _count_change(connection)
    return row


async def list_webhooks(connection: AsyncConnection) -> list[WebhookRow]:
    rows = await connection.execute(select(webhooks).order_by(webhooks.c.created_at, webhooks.c.id))
    return [_webhook(row) for row in rows]


async def get_webhook(connection: AsyncConnection, webhook_id: str) -> WebhookRow | None:
    row = (await connection.execute(select(webhooks).where(webhooks.c.id == webhook_id))).first()
    return None if row is None else _webhook(row)


async def change_webhook(
    connection: AsyncConnection, webhook_id: str, values: dict[str, Any], now: int = 0
) -> WebhookRow | None:
    """Set ``values`` (``events``/``sessions`` as lists, ``status``); a subscription made
    active again starts a new run of failures, and its waiting deliveries a new retry
    period from their next attempt (the time it held them spends none). A status set
    (paused or active) takes deliveries again after its outbox was full: the range of
    events it skipped ends at ``now`` (ms). ``acknowledge_skipped`` (the ``skipped_to``
    the integrator read) forgets that range, first: ``Conflict`` when the range is
    another (or still open), nothing changed. None for an unknown id."""
    if "acknowledge_skipped" in values and await get_webhook(connection, webhook_id) is not None:
        await _acknowledge_skipped(connection, webhook_id, values["acknowledge_skipped"])
    stored: dict[str, Any] = {}
    if "events" in values:
        stored["events"] = json.dumps(sorted(set(values["events"])))
    if "sessions" in values:
        sessions = values["sessions"]
        stored["sessions"] = None if sessions is None else json.dumps(sorted(set(sessions)))
    if "status" in values:
        stored["status"] = values["status"]
        stored["full_at"] = None
        stored["skipped_to"] = _skipping_ends(now)
        if values["status"] == ACTIVE:
            stored["failures"] = 0
            stored["disabled_reason"] = None
    resumed = False
    if stored.get("status") == ACTIVE:
        found = await connection.execute(
            select(webhooks.c.status).where(webhooks.c.id == webhook_id)
        )
        resumed = found.scalar() not in (None, ACTIVE)
    if stored:
        await connection.execute(update(webhooks).where(webhooks.c.id == webhook_id).values(stored))
        await _count_change(connection)
    if resumed:
        d = webhook_deliveries
        # Those with a period under way: the heads it attempted (an index range of
        # ``ix_webhook_deliveries_waiting``, bounded by its cap).
        await connection.execute(
            update(d)
            .where(d.c.webhook_id == webhook_id, WAITING, d.c.retry_from.is_not(None))
            .values(retry_from=None)
        )
    return await get_webhook(connection, webhook_id)


def _skipping_ends(now: int) -> Any:
    """``skipped_to`` of a subscription that takes events again at ``now``: the end of the
    range it skipped if it was full, else as it was."""
    w = webhooks
    return case((w.c.full_at.is_not(None), now), else_=w.c.skipped_to)


async def _acknowledge_skipped(connection: AsyncConnection, webhook_id: str, to: int) -> None:
    """Forget the skipped range read by the integrator (its ``skipped_to``), nothing else:
    a range still open, or grown since (ended anew), is refused."""
    w = webhooks
    done = await connection.execute(
        update(w)
        .where(w.c.id == webhook_id, w.c.skipped_to == to, w.c.full_at.is_(None))
        .values(skipped_from=None, skipped_to=None)
    )
    if not done.rowcount:
        row = await get_webhook(connection, webhook_id)
        if row is not None and row.skipped_from is not None and row.skipped_to is None:
            raise Conflict(
                f"acknowledge_skipped: events are still skipped since {row.skipped_from}; "
                "acknowledge once skipped_to is set"
            )
        raise Conflict(
            f"acknowledge_skipped: {to} is not this subscription's skipped_to "
            f"({row.skipped_to if row is not None else None}); read it again"
        )


async def mark_full(
    connection: AsyncConnection, waiting: dict[str, tuple[int, int]], now: int
) -> None:
    """These subscriptions' outboxes hold their cap (``waiting``: deliveries, by id): write
    no delivery for them from now on (every node, from its next event write:
    ``Subscription.full``), and disable those that are not sending (paused or disabled),
    saying why. An active one keeps its status and sends what it holds: it takes new
    deliveries again once half the cap or fewer wait (``outbox.record``; disabled, a
    subscription resumed with a full outbox would be disabled again at its next event,
    its deliveries never sent). ``waiting`` also gives the time (ms) of the first event
    not written for each: the skipped range starts there, unless one not yet acknowledged
    is open or ended before (it then runs on from its start, open again). The counter
    last: a transaction holding it has no row lock left to wait for."""
    changed = 0
    w = webhooks
    for webhook_id, (count, first_skipped) in sorted(waiting.items()):
        reason = (
            f"outbox full: {count} deliveries waiting (PARLEY_WEBHOOK_MAX_WAITING); events "
            "from full_at on are not delivered to this subscription; set status to resume"
        )
        unset = [w.c.id == webhook_id, w.c.full_at.is_(None)]
        skipping = {
            "full_at": now,
            "skipped_from": func.coalesce(w.c.skipped_from, first_skipped),
            "skipped_to": None,
        }
        sending = await connection.execute(
            update(w).where(*unset, w.c.status == ACTIVE).values(skipping)
        )
        held = await connection.execute(
            update(w)
            .where(*unset, w.c.status != ACTIVE)
            .values(status=DISABLED, disabled_reason=reason, **skipping)
        )
        changed += sending.rowcount + held.rowcount
    if changed:
        await _count_change(connection)


async def not_full(connection: AsyncConnection, webhook_id: str, now: int) -> None:
    """The active subscription's outbox has room again: it takes deliveries again from
    ``now`` (ms), where the range it skipped ends."""
    w = webhooks
    result = await connection.execute(
        update(w)
        .where(w.c.id == webhook_id, w.c.status == ACTIVE, w.c.full_at.is_not(None))
        .values(full_at=None, skipped_to=now)
    )
    if result.rowcount:
        await _count_change(connection)


async def delete_webhook(connection: AsyncConnection, webhook_id: str) -> bool:
    """Delete a subscription with its deliveries and their attempts (children first:
    SQLite enforces ON DELETE CASCADE only with the pragma on)."""
    mine = select(webhook_deliveries.c.id).where(webhook_deliveries.c.webhook_id == webhook_id)
    await connection.execute(
        delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(mine))
    )
    await connection.execute(
        delete(webhook_deliveries).where(webhook_deliveries.c.webhook_id == webhook_id)
    )
    result = await connection.execute(delete(webhooks).where(webhooks.c.id == webhook_id))
    if result.rowcount:
        await _count_change(connection)
    return bool(result.rowcount)
