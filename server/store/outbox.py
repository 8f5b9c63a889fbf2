"""The outbox of event webhook deliveries and their attempts.

``enqueue`` runs inside the transaction that stores the events (``StoreTx.append_events``,
session creation and deletion), so a delivery exists exactly when its event committed.
The delivery worker (``server.outbound.webhook_sender``) claims due rows with ``claim`` and records
each attempt with ``record``.

One session's deliveries to one subscription go out one after another, in order: only
the first unfinished one, its *head* (``webhook_deliveries.head``), may be claimed. The
head is kept by ``enqueue`` (a new delivery is the head when its session has none) and
moves on when it is delivered or given up (``record``) or an older one is retried
(``retry``), so a claim reads an index range of due heads, whatever the backlog. On
PostgreSQL the writes that look at a session's head take a transaction lock on it first
(``_lock_heads``): otherwise a delivery enqueued while its head completes could be seen
by neither and wait forever. SQLite writes one transaction at a time anyway.

A delivery's retry period runs from its first attempt (``retry_from``, set by the claim),
not from its event: time spent waiting behind its session's head, or while its
subscription was paused or disabled, is no attempt and spends none of it. A manual retry,
a delivery becoming the head again, and a subscription resumed (``webhooks.change_webhook``)
start a new period at the next attempt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, false, func, insert, select, text, true, update
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.server.store import horizon
from parley.server.store.tables import (
    WAITING,
    webhook_attempts,
    webhook_deliveries,
    webhooks,
)
from parley.server.store.webhooks import (
    ACTIVE,
    DELIVERED,
    DISABLED,
    FAILED,
    PENDING,
    SENDING,
    WaitingCap,
    mark_full,
    not_full,
)
from parley.session.webhook_events import Outgoing, Subscription, outgoing
from parley.session.webhook_lanes import FAILING_AFTER, Lanes, pick


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery claimed for one attempt, with what it takes to send it."""

    id: str
    webhook_id: str
    session_id: str
    url: str
    secret: str
    message_id: str
    payload: str
    attempts: int
    # ms: its retries end a retry period after this, its first attempt since it was written,
    # became its session's head again, was retried or its subscription resumed.
    retry_from: int
    # Its subscription failed ``FAILING_AFTER`` times or more in a row (``webhooks.failures``).
    failing: bool = False


async def enqueue(
    connection: AsyncConnection,
    subscriptions: Sequence[Subscription],
    session_id: str,
    events: Sequence[tuple[int, int, str, dict[str, Any]]],
    cap: WaitingCap | None = None,
) -> int:
    """Write the deliveries of ``events`` (event seq, at ms, webhook type, data) for every
    one of ``subscriptions`` that wants them, paused and disabled ones too (they wait);
    returns how many. Call in the events' own transaction.

    With ``cap``, a subscription whose unfinished deliveries would pass ``cap.limit`` gets
    none past it and is marked full (``webhooks.mark_full``); the events are stored all the
    same (one subscription's backlog never refuses a session's write)."""
    if not events or not subscriptions:
        return 0
    found: list[tuple[int, Outgoing]] = []
    for seq, at_ms, kind, data in events:
        found += [(at_ms, o) for o in outgoing(subscriptions, session_id, seq, at_ms, kind, data)]
    full: dict[str, tuple[int, int]] = {}
    if found and cap is not None:
        found, full = await _within_cap(connection, found, cap)
    if found:
        keys = sorted({o.webhook_id for _, o in found})
        await _lock_heads(connection, [(key, session_id) for key in keys])
        d = webhook_deliveries
        headed = set(
            (
                await connection.execute(
                    select(d.c.webhook_id).where(
                        d.c.webhook_id.in_(keys), d.c.session_id == session_id, d.c.head == true()
                    )
                )
            ).scalars()
        )
        heads: set[int] = set()
        for index, (_, o) in enumerate(found):  # ids follow this order: the first is oldest
            if o.webhook_id not in headed:
                headed.add(o.webhook_id)
                heads.add(index)
        await connection.execute(
            insert(webhook_deliveries),
            [
                {
                    "webhook_id": o.webhook_id,
                    "session_id": session_id,
                    "message_id": o.message_id,
                    "type": o.type,
                    "payload": o.payload,
                    "status": PENDING,
                    "attempts": 0,
                    "next_at": at_ms,
                    "retry_from": None,  # its retry period starts at its first attempt
                    "created_at": at_ms,
                    "head": index in heads,
                }
                for index, (at_ms, o) in enumerate(found)
            ],
        )
    if full:
        # Last: the heads' locks before the subscriptions' rows, as ``record`` takes them.
        await mark_full(connection, full, events[-1][1])
    return len(found)


async def _within_cap(
    connection: AsyncConnection, found: list[tuple[int, Outgoing]], cap: WaitingCap
) -> tuple[list[tuple[int, Outgoing]], dict[str, tuple[int, int]]]:
    """``found`` without the deliveries past their subscription's cap (the oldest kept),
    and the subscriptions that reached it, with their deliveries waiting and the time of
    the first event not written for them."""
    adding: dict[str, int] = {}
    for _, o in found:
        adding[o.webhook_id] = adding.get(o.webhook_id, 0) + 1
    room: dict[str, int] = {}
    waiting_at_cap: dict[str, int] = {}
    for webhook_id, count in sorted(adding.items()):
        if not cap.count_due(webhook_id, count):
            continue
        waiting = await _waiting(connection, webhook_id, cap.limit)
        if waiting + count > cap.limit:
            room[webhook_id] = max(0, cap.limit - waiting)
            waiting_at_cap[webhook_id] = max(waiting, cap.limit)
    if not room:
        return found, {}
    kept: list[tuple[int, Outgoing]] = []
    full: dict[str, tuple[int, int]] = {}
    for at_ms, o in found:
        left = room.get(o.webhook_id)
        if left is None or left > 0:
            kept.append((at_ms, o))
            if left is not None:
                room[o.webhook_id] = left - 1
        elif o.webhook_id not in full:
            full[o.webhook_id] = (waiting_at_cap[o.webhook_id], at_ms)
    return kept, full


async def _waiting(connection: AsyncConnection, webhook_id: str, limit: int) -> int:
    """The subscription's unfinished deliveries, counted up to ``limit`` (an index range
    of ``ix_webhook_deliveries_waiting``)."""
    d = webhook_deliveries
    some = select(d.c.id).where(d.c.webhook_id == webhook_id, WAITING).limit(limit).subquery()
    return int((await connection.execute(select(func.count()).select_from(some))).scalar_one())


# -- deliveries ---------------------------------------------------------------------------


async def _lock_heads(connection: AsyncConnection, keys: Sequence[tuple[str, str]]) -> None:
    """PostgreSQL: hold the heads of these (subscription, session) pairs until the
    transaction ends, so that the next statement sees every delivery of theirs committed
    before. Take them in sorted order (no deadlock between two writers)."""
    if connection.dialect.name != "postgresql":
        return
    for webhook_id, session_id in keys:
        await connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:w), hashtext(:s))"),
            {"w": webhook_id, "s": session_id},
        )


async def _advance_head(
    connection: AsyncConnection, webhook_id: str, session_id: str, head: int
) -> None:
    """``head`` is finished: the session's next unfinished delivery becomes the head."""
    d = webhook_deliveries
    await connection.execute(update(d).where(d.c.id == head).values(head=False))
    following = (
        await connection.execute(
            select(d.c.id)
            .where(
                d.c.webhook_id == webhook_id,
                d.c.session_id == session_id,
                d.c.head == false(),
                d.c.id > head,
                d.c.status.in_((PENDING, SENDING)),
            )
            .order_by(d.c.id)
            .limit(1)
        )
    ).first()
    if following is not None:  # its retry period starts at its next attempt
        await connection.execute(
            update(d).where(d.c.id == following.id).values(head=True, retry_from=None)
        )


async def claim(
    connection: AsyncConnection, now: int, lease_ms: int, limit: int, lanes: Lanes | None = None
) -> list[Claimed]:
    """Take up to ``limit`` due deliveries of active subscriptions for one attempt each,
    leased until ``now + lease_ms`` (a claimer that dies leaves them due again then).

    Only heads are claimed: one session's deliveries go out one after another, in order.
    With ``lanes`` (the claimer's attempts in flight), fairly across subscriptions
    (``session.webhook_lanes``): no subscription takes more than its share of the slots
    while others wait, and the failing ones take few. The cost is the due heads read (plus
    the heads of paused and disabled subscriptions due before them), not the backlog behind
    them. PostgreSQL skips rows another node holds (``FOR UPDATE SKIP LOCKED``); on SQLite
    one writer at a time claims."""
    d = webhook_deliveries
    query = (
        select(
            d.c.id,
            d.c.webhook_id,
            d.c.session_id,
            d.c.message_id,
            d.c.payload,
            d.c.attempts,
            d.c.retry_from,
        )
        .add_columns(webhooks.c.url, webhooks.c.secret, webhooks.c.failures)
        .join(webhooks, webhooks.c.id == d.c.webhook_id)
        .where(
            d.c.head == true(),
            d.c.next_at <= now,
            d.c.status.in_((PENDING, SENDING)),
            webhooks.c.status == ACTIVE,
        )
    )
    query = query.order_by(d.c.next_at, d.c.id)
    locking = connection.dialect.name == "postgresql"
    if lanes is None:
        windows = [query.limit(limit)]
    else:
        # The oldest due, with room to skip what the caps leave out (``pick`` ranks them):
        # ranked here, one busy subscription's newer heads would fill the window. The
        # proven's oldest too (review: 99 flaky receivers' retries, older, filled the
        # window, and a healthy receiver's deliveries were never among the candidates).
        window = limit * CANDIDATES_PER_SLOT
        windows = [_within(query, lanes).limit(window)]
        if lanes.proven and not lanes.clean_only:
            proven = d.c.webhook_id.in_(sorted(lanes.proven))
            windows.insert(0, _within(query.where(proven), lanes).limit(window))
    seen: dict[str, Claimed] = {}
    for window_query in windows:
        if locking:
            window_query = window_query.with_for_update(skip_locked=True, of=d)
        for row in await connection.execute(window_query):
            claimed = _claimed(row, now)
            seen.setdefault(claimed.id, claimed)
    candidates = list(seen.values())
    taken = candidates if lanes is None else pick(candidates, lanes, limit)
    if not taken:
        return []
    await connection.execute(
        update(d)
        .where(d.c.id.in_([int(c.id) for c in taken]))
        .values(
            status=SENDING, next_at=now + lease_ms, retry_from=func.coalesce(d.c.retry_from, now)
        )
    )
    return taken


# Due heads read per free slot: a claim skips the heads of subscriptions past their share.
CANDIDATES_PER_SLOT = 4


def _claimed(row: Any, now: int) -> Claimed:
    return Claimed(
        str(row.id),
        row.webhook_id,
        row.session_id,
        row.url,
        row.secret,
        row.message_id,
        row.payload,
        int(row.attempts),
        now if row.retry_from is None else int(row.retry_from),
        failing=int(row.failures) >= FAILING_AFTER,
    )


async def next_due(connection: AsyncConnection, lanes: Lanes | None = None) -> int | None:
    """When the earliest unfinished delivery of an active subscription falls due (ms), or
    None when none waits (only heads can be due); with ``lanes``, of the subscriptions
    that may take a slot now."""
    d = webhook_deliveries
    query = (
        select(d.c.next_at)
        .join(webhooks, webhooks.c.id == d.c.webhook_id)
        .where(d.c.head == true(), webhooks.c.status == ACTIVE)
        .order_by(d.c.next_at)
        .limit(1)
    )
    if lanes is not None:
        query = _within(query, lanes)
    found = (await connection.execute(query)).first()
    return None if found is None else int(found.next_at)


def _within(query: Any, lanes: Lanes) -> Any:
    """``query`` of due heads, without the subscriptions ``lanes`` says may take no slot."""
    if lanes.full:
        query = query.where(webhook_deliveries.c.webhook_id.not_in(sorted(lanes.full)))
    if lanes.failing_full:
        query = query.where(webhooks.c.failures < FAILING_AFTER)
    if lanes.clean_only:  # no failure stored, none seen here lately
        query = query.where(webhooks.c.failures == 0)
        if lanes.owed:
            query = query.where(webhook_deliveries.c.webhook_id.not_in(sorted(lanes.owed)))
    return query


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one attempt went: ``response_code`` None when no answer came (``error`` says)."""

    at: int
    latency_ms: int
    response_code: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.response_code is not None and 200 <= self.response_code < 300


async def record(
    connection: AsyncConnection,
    delivery: Claimed,
    attempt: Attempt,
    *,
    retry_at: int | None,
    failure_limit: int,
    cap: WaitingCap | None = None,
) -> None:
    """Store an attempt: delivered, due again at ``retry_at``, or failed for good (None).
    A failure adds to the subscription's run of failures, which disables it at
    ``failure_limit``; a success ends the run, and an active subscription whose outbox was
    full takes deliveries again once half of ``cap``'s limit (default: ``MAX_WAITING``) or
    fewer wait, counted when ``cap`` says so. Nothing for a delivery deleted meanwhile
    (with its subscription)."""
    cap = WaitingCap() if cap is None else cap
    d = webhook_deliveries
    await _lock_heads(connection, [(delivery.webhook_id, delivery.session_id)])
    stored = (await connection.execute(select(d.c.head).where(d.c.id == int(delivery.id)))).first()
    if stored is None:
        return
    await connection.execute(
        insert(webhook_attempts).values(
            delivery_id=int(delivery.id),
            at=attempt.at,
            latency_ms=attempt.latency_ms,
            response_code=attempt.response_code,
            error=attempt.error,
        )
    )
    values: dict[str, Any] = {"attempts": d.c.attempts + 1}
    if attempt.ok:
        values["status"] = DELIVERED
    elif retry_at is None:
        values["status"] = FAILED
    else:
        values.update(status=PENDING, next_at=retry_at)
    # Only while still claimed: a retry asked for meanwhile keeps its own state.
    changed = await connection.execute(
        update(d).where(d.c.id == int(delivery.id), d.c.status == SENDING).values(values)
    )
    if changed.rowcount and values.get("status") in (DELIVERED, FAILED) and stored.head:
        await _advance_head(connection, delivery.webhook_id, delivery.session_id, int(delivery.id))
    w = webhooks
    if attempt.ok:
        found = await connection.execute(
            update(w)
            .where(w.c.id == delivery.webhook_id)
            .values(failures=0)
            .returning(w.c.status, w.c.full_at)
        )
        now = found.first()
        full = now is not None and now.full_at is not None and now.status == ACTIVE
        half = cap.limit // 2
        if (
            full
            and cap.recount_due(delivery.webhook_id)
            and await _waiting(connection, delivery.webhook_id, half + 1) <= half
        ):
            await not_full(connection, delivery.webhook_id, attempt.at + attempt.latency_ms)
        return
    await connection.execute(
        update(w).where(w.c.id == delivery.webhook_id).values(failures=w.c.failures + 1)
    )
    reason = (
        f"{failure_limit} deliveries failed in a row; the last: "
        f"{attempt.error or f'HTTP {attempt.response_code}'}"
    )
    await connection.execute(
        update(w)
        .where(w.c.id == delivery.webhook_id, w.c.status == ACTIVE, w.c.failures >= failure_limit)
        .values(status=DISABLED, disabled_reason=reason[:500])
    )


async def list_deliveries(
    connection: AsyncConnection, webhook_id: str, after: horizon.Place | int, limit: int
) -> list[tuple[Any, list[Any]]]:
    """The subscription's deliveries after ``after`` (a delivery's place, or its id),
    oldest first, each with its attempts; none still being written, nor any after one
    (``horizon``)."""
    d = webhook_deliveries
    where, order = await horizon.after(connection, d, [d.c.webhook_id == webhook_id], after)
    rows = list(await connection.execute(select(d).where(*where).order_by(*order).limit(limit)))
    attempts: dict[int, list[Any]] = {int(row.id): [] for row in rows}
    if rows:
        found = await connection.execute(
            select(webhook_attempts)
            .where(webhook_attempts.c.delivery_id.in_(list(attempts)))
            .order_by(webhook_attempts.c.id)
        )
        for attempt in found:
            attempts[int(attempt.delivery_id)].append(attempt)
    return [(row, attempts[int(row.id)]) for row in rows]


async def retry(connection: AsyncConnection, webhook_id: str, delivery_id: int, now: int) -> bool:
    """Make a delivery due now, with a new retry period from its next attempt; False for
    an unknown one. It goes out once the session's older unfinished deliveries are done,
    and before its younger ones (it becomes their head)."""
    d = webhook_deliveries
    found = (
        await connection.execute(
            select(d.c.session_id).where(d.c.id == delivery_id, d.c.webhook_id == webhook_id)
        )
    ).first()
    if found is None:
        return False
    session_id = found.session_id
    await _lock_heads(connection, [(webhook_id, session_id)])
    result = await connection.execute(
        update(d)
        .where(d.c.id == delivery_id, d.c.webhook_id == webhook_id)
        .values(status=PENDING, next_at=now, retry_from=None)
    )
    if not result.rowcount:  # deleted meanwhile
        return False
    head = (
        await connection.execute(
            select(d.c.id).where(
                d.c.webhook_id == webhook_id, d.c.session_id == session_id, d.c.head == true()
            )
        )
    ).first()
    if head is None or int(head.id) > delivery_id:
        if head is not None:
            await connection.execute(update(d).where(d.c.id == head.id).values(head=False))
        await connection.execute(update(d).where(d.c.id == delivery_id).values(head=True))
    return True


async def prune(connection: AsyncConnection, before: int) -> int:
    """Delete finished deliveries (delivered or failed) made before ``before`` (ms), with
    their attempts; returns how many. Unfinished ones stay, however old."""
    d = webhook_deliveries
    old = select(d.c.id).where(d.c.status.in_((DELIVERED, FAILED)), d.c.created_at < before)
    await connection.execute(
        delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(old))
    )
    result = await connection.execute(
        delete(d).where(d.c.status.in_((DELIVERED, FAILED)), d.c.created_at < before)
    )
    return int(result.rowcount)
