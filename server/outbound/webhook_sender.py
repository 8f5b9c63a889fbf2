"""The event webhook sender: one asyncio task per process that delivers the outbox.

It claims due deliveries (``server.store.webhooks.claim``), POSTs each one signed per the
Standard Webhooks specification, and records the attempt: delivered, due again after an
exponential back-off with jitter, or failed for good once the retry period is over. It
runs beside the sessions, never in their write path: a slow or dead receiver costs the
sender's own connections and the outbox's rows, not a session's turn to write.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from parley.authz.standard_webhooks import headers
from parley.server.outbound.targets import (
    OutboundClient,
    OutboundError,
    RefusedTarget,
    Resolver,
    system_resolver,
)
from parley.server.settings import Settings
from parley.server.store.outbox import Attempt, Claimed, claim, next_due, prune, record
from parley.server.store.sessions import Store
from parley.server.store.tables import webhook_deliveries
from parley.server.store.webhooks import PENDING, SENDING, WaitingCap
from parley.session.backoff import doubling_s
from parley.session.errors import NotFound, ParleyError
from parley.session.webhook_lanes import (
    SLOW_AFTER_S,
    SLOW_PER_SLOT,
    Lanes,
    Standing,
    free_slots,
)

log = logging.getLogger("parley.webhooks")

# Subscriptions remembered as answering (``Standing``): more than there may be.
MAX_PROVEN = 1000
# Of a receiver's answer, at most this much is read (and dropped).
ANSWER_READ_BYTES = 4096
# How often finished deliveries past ``webhook_keep_s`` are deleted.
PRUNE_EVERY_S = 600.0
# Rounds start this far apart at least. Every commit that writes deliveries wakes the
# sender, far more often than deliveries fall due (a session's next one waits for the one
# before), and each round costs a read: without a gap the commits, not the deliveries,
# set the sender's cost.
ROUND_GAP_S = 0.05


def backoff_s(settings: Settings, attempts: int, rng: random.Random) -> float:
    """The wait before the next attempt, after ``attempts`` failed ones (from 1): doubling
    from the base up to the maximum, each drawn from its upper half (jitter)."""
    ceiling = doubling_s(settings.webhook_retry_base_s, settings.webhook_retry_max_s, attempts)
    return ceiling * rng.uniform(0.5, 1.0)


class WebhookSender:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        clock: Callable[[], float],
        resolver: Resolver = system_resolver,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        # When a full subscription's backlog is counted again as it drains (``record``).
        self._cap = WaitingCap(settings.webhook_max_waiting)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Each attempt in flight: what it sends, and when it started (``time.monotonic``).
        self._sending: dict[asyncio.Task[None], tuple[Claimed, float]] = {}
        # Subscriptions whose last attempts from here succeeded (``session.webhook_lanes``:
        # served first); at most ``MAX_PROVEN``, the oldest forgotten first.
        self._standing = Standing(MAX_PROVEN)
        self._rng = random.Random()
        self._http = OutboundClient(
            allow_private=settings.webhook_allow_private,
            resolver=resolver,
            max_connections=(1 + SLOW_PER_SLOT) * settings.webhook_concurrency,
        )
        # Longer than an attempt can take: a sender that dies mid-attempt leaves its
        # deliveries to be claimed again once their lease is over.
        self.lease_ms = int((settings.webhook_timeout_s * 2 + 10) * 1000)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def start(self, *, sole_sender: bool) -> None:
        """Start delivering. ``sole_sender``: no other process sends from this database,
        so deliveries left mid-attempt by an earlier run are due at once."""
        if sole_sender:
            try:
                await self._recover()
            except ParleyError as exc:  # the leases bring them back instead
                log.warning("webhook deliveries under way at the last stop wait: %s", exc)
        self.store.on_outbox = self.wake
        self._task = asyncio.create_task(self._run(), name="webhook-sender")

    async def _recover(self) -> None:
        d = webhook_deliveries
        async with self.store.read() as connection:
            found = await connection.execute(select(d.c.id).where(d.c.status == SENDING).limit(1))
            if found.first() is None:
                return
        async with self.store.transaction("webhook recovery") as tx:
            await tx.connection.execute(
                update(d).where(d.c.status == SENDING).values(status=PENDING, next_at=0)
            )

    def wake(self) -> None:
        """Look for due deliveries now (new ones were committed)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop claiming, abandon attempts under way (their leases bring them back)."""
        self.store.on_outbox = None
        tasks = [t for t in (self._task, *self._sending) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.aclose()

    async def _run(self) -> None:
        poll_s = self.settings.webhook_poll_s
        failing: str | None = None
        pruned_at = time.monotonic()
        while True:
            self._wake.clear()
            round_at = time.monotonic()
            wait_s = poll_s
            try:
                if time.monotonic() - pruned_at > PRUNE_EVERY_S:
                    pruned_at = time.monotonic()
                    await self._prune()
                started = (at for _, at in self._sending.values())
                free = free_slots(self.settings.webhook_concurrency, started, time.monotonic())
                lanes = self._lanes()
                if free == 0 and lanes.reserved:
                    # Every slot held by others: those in good standing take the slots kept
                    # for them.
                    free, lanes = lanes.reserved, replace(lanes, clean_only=True)
                due = await self._due_in_ms(lanes) if free > 0 else None
                if due is not None and due <= 0:
                    async with self.store.transaction("webhook claim") as tx:
                        now = self._now_ms()
                        claimed = await claim(tx.connection, now, self.lease_ms, free, lanes)
                    for delivery in claimed:
                        task = asyncio.create_task(self._deliver(delivery))
                        self._sending[task] = (delivery, time.monotonic())
                        task.add_done_callback(self._finished)
                    if claimed:  # look again once they may stop counting (``free_slots``)
                        asyncio.get_running_loop().call_later(SLOW_AFTER_S, self._wake.set)
                    if len(claimed) == free:
                        continue
                elif due is not None:
                    wait_s = min(poll_s, due / 1000)
                failing = None
            except (ParleyError, OSError) as exc:
                if failing != str(exc):  # once per outage, not once per round
                    log.warning("webhook sender waits: %s", exc)
                failing = str(exc)
            except Exception:
                log.exception("webhook sender failed a round")
            try:
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            await asyncio.sleep(round_at + ROUND_GAP_S - time.monotonic())

    async def _prune(self) -> None:
        before = self._now_ms() - int(self.settings.webhook_keep_s * 1000)
        d = webhook_deliveries
        async with self.store.read() as connection:  # a write only when there is work
            found = await connection.execute(select(d.c.id).where(d.c.created_at < before).limit(1))
            if found.first() is None:
                return
        async with self.store.transaction("webhook prune") as tx:
            await prune(tx.connection, before)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._sending.pop(task, None)
        self._wake.set()  # a slot is free; the session's next delivery may be due

    def _lanes(self) -> Lanes:
        """The attempts in flight, by subscription, for a fair claim."""
        sending = [delivery for delivery, _ in self._sending.values()]
        in_flight = Counter(d.webhook_id for d in sending)
        failing = frozenset(d.webhook_id for d in sending if d.failing)
        # Not in good standing either: one whose attempt waits past ``SLOW_AFTER_S`` (a
        # receiver that hangs is known long before its attempt times out).
        now = time.monotonic()
        slow = frozenset(
            d.webhook_id for d, at in self._sending.values() if now - at >= SLOW_AFTER_S
        )
        standing = self._standing
        return Lanes.of(
            self.settings.webhook_concurrency,
            in_flight,
            failing,
            standing.proven - slow,
            standing.owed | slow,
        )

    def _outcome(self, webhook_id: str, ok: bool) -> None:
        self._standing.record(webhook_id, ok)

    async def _due_in_ms(self, lanes: Lanes) -> int | None:
        async with self.store.read() as connection:
            due = await next_due(connection, lanes)
        return None if due is None else due - self._now_ms()

    async def _deliver(self, delivery: Claimed) -> None:
        attempt = await self._attempt(delivery)
        # The wait counts from the attempt's end: from its start, a receiver that times
        # out (an attempt longer than the wait) was tried again at once (review I6).
        ended = self._now_ms()
        self._outcome(delivery.webhook_id, attempt.ok)
        retry_at: int | None = None
        if not attempt.ok:
            wait_ms = int(backoff_s(self.settings, delivery.attempts + 1, self._rng) * 1000)
            end = delivery.retry_from + int(self.settings.webhook_retry_period_s * 1000)
            if ended + wait_ms <= end:
                retry_at = ended + wait_ms
        try:
            async with self.store.transaction("webhook attempt") as tx:
                await record(
                    tx.connection,
                    delivery,
                    attempt,
                    retry_at=retry_at,
                    failure_limit=self.settings.webhook_failure_limit,
                    cap=self._cap,
                )
        except (IntegrityError, NotFound):  # the subscription was deleted meanwhile
            log.info("webhook attempt of a deleted subscription", extra={"id": delivery.id})
        except ParleyError as exc:  # the lease brings the delivery back
            log.warning("webhook attempt not recorded: %s", exc)

    async def _attempt(self, delivery: Claimed) -> Attempt:
        at = self._now_ms()
        started = time.monotonic()
        code: int | None = None
        error: str | None = None
        body = delivery.payload.encode()
        sent = headers(delivery.secret, delivery.message_id, int(self.clock()), body)
        try:
            # Only the status counts; a short body is read so that the connection can
            # serve the next delivery (a new connection per delivery cost the sessions'
            # event loop more than the rest of the attempt).
            answer = await self._http.post(
                delivery.url,
                body,
                sent,
                timeout_s=self.settings.webhook_timeout_s,
                max_body_bytes=ANSWER_READ_BYTES,
            )
            code = answer.status_code
        except RefusedTarget as exc:
            error = f"refused target: {exc}"
        except OutboundError as exc:  # no answer in time, or none at all
            error = str(exc)
        except Exception as exc:  # any URL an admin gave: never the sender's end
            error = f"{type(exc).__name__}: {exc}"[:500]
        latency_ms = int((time.monotonic() - started) * 1000)
        return Attempt(at, latency_ms, code, error)
