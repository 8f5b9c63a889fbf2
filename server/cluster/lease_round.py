"""A cluster node's periodic rounds, every quarter of ``lease_ttl_s``: one renews the leases
it holds (a lease it could not renew is lost; one whose row another transaction holds is
asked again next round, and kept meanwhile as long as it runs); beside it, so that nothing
there delays a renewal, the other takes over sessions whose holder stopped renewing (its
replicas first, then any session with work and no live holder), and, less often, looks at
everything again (the safety net for a missed notification), puts the stored settings in
force on its rooms and forgets the forwarded commands sent long ago. A database outage
is logged once for both (``OutageLog``), not by each at every round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from parley.server.cluster.forwarding import expire_taken_s
from parley.server.cluster.lease import Renewal
from parley.session.errors import NotFound, Unavailable

if TYPE_CHECKING:
    from parley.server.cluster.lease import Lease
    from parley.server.cluster.node import ClusterNode

log = logging.getLogger("parley.cluster")

COMMANDS_KEPT_S = 600  # forwarded commands, answered or not (``CommandTable.prune``)


class OutageLog:
    """A database outage as the node's loops meet it: one warning when the first of them
    fails ``Unavailable``, and one line once each that failed has worked again (FX61:
    each loop logged a warning every round, every quarter of the TTL, for as long as the
    database was down). A loop's other errors are bugs, logged every time as before."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._failing: set[str] = set()  # the loops whose last round failed so
        self._began = 0.0
        self._failed_rounds = 0

    def failed(self, loop: str, exc: Unavailable) -> None:
        if not self._failing:
            self._began, self._failed_rounds = self.clock(), 0
            log.warning("cluster rounds failing", extra={"round": loop, "error": str(exc)})
        self._failing.add(loop)
        self._failed_rounds += 1

    def worked(self, loop: str) -> None:
        if loop not in self._failing:
            return
        self._failing.discard(loop)
        if not self._failing:
            down_s = round(self.clock() - self._began, 1)
            extra = {"failed_rounds": self._failed_rounds, "down_s": down_s}
            log.info("cluster rounds working again", extra=extra)


class LeaseRound:
    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.outage = OutageLog()

    async def run(self) -> None:
        """Renew this node's leases every quarter of the TTL and, beside that, take
        sessions over and do the rest: a takeover that waits (on a lease row another
        transaction holds, or a long load) delays no renewal (FX51: in one loop, it held
        every renewal after it up, past the TTL)."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._renewing())
            tasks.create_task(self._tending())

    async def _renewing(self) -> None:
        while True:
            await asyncio.sleep(self.node.settings.lease_ttl_s / 4)
            try:
                await self._keep_leases()
            except Unavailable as exc:
                self.outage.failed("renewals", exc)
            except Exception as exc:
                log.warning("lease round failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            else:
                self.outage.worked("renewals")

    async def _tending(self) -> None:
        node = self.node
        last_poll = 0.0
        last_cleanup = time.monotonic()
        while True:
            await asyncio.sleep(node.settings.lease_ttl_s / 4)
            try:
                await self._take_over()
                now = time.monotonic()
                if now - last_poll >= node.settings.cluster_poll_s:
                    last_poll = now
                    node.look_again()  # the safety net for a missed notification
                    await self._refresh_members()
                if now - last_cleanup >= COMMANDS_KEPT_S / 10:
                    last_cleanup = now
                    forwarded_s = expire_taken_s(node.settings.forward_timeout_s)
                    await node.relay.table.prune(max(COMMANDS_KEPT_S, 2 * forwarded_s))
            except Unavailable as exc:
                self.outage.failed("takeovers", exc)
            except Exception as exc:
                log.warning(
                    "takeover round failed", extra={"error": f"{type(exc).__name__}: {exc}"}
                )
            else:
                self.outage.worked("takeovers")

    async def _refresh_members(self) -> None:
        """The safety net for settings changed on other nodes: put the stored ones in force
        on this node's rooms (a removed member's socket closes with 4403 and their prompts
        stop, a revoked token's socket with 4401, a deleted session's with 4404)."""
        registry = self.node.registry
        for session_id in list(self.node.runners):
            room = registry.loaded(session_id)
            if room is None or room.closed:
                continue
            try:
                await room.reload_settings()
                if session_id in self.node.running:  # (a read replica starts no run)
                    await room.reload_quotas()
            except NotFound:
                await registry.forget_session(session_id)

    async def _keep_leases(self) -> None:
        """Renew every lease this node holds, in one statement that waits on no row (a
        lease whose row another transaction holds is kept as long as it runs as last
        committed, and asked again next round: FX51); a database fault fails the round
        (``Unavailable``, logged by ``_renewing``). Any other error is a bug in one lease's
        renewal (review FX36: it escaped the round, so the leases after it were neither
        kept nor let go, every round): logged with its session id, and the others are
        renewed one by one; a lease whose renewal failed so is neither kept nor lost here
        (its deadline lapses, and ``ClusterNode.lease_holds`` asks again)."""
        node = self.node
        held = list(node.leases.values())
        asked_at = time.monotonic()
        unknown: set[str] = set()
        try:
            found = await node.leases_table.renew(held)
        except Unavailable:
            raise
        except Exception:
            found, unknown = await self._renew_one_by_one(held)
        for lease in held:
            if lease.session_id in unknown:
                continue
            try:
                if found.holds(lease.session_id):
                    node.renewed([lease], asked_at, found.locked.get(lease.session_id))
                else:
                    node.lost(lease.session_id, lease)
            except Exception:
                log.exception("lease renewal failed", extra={"session_id": lease.session_id})

    async def _renew_one_by_one(self, held: list[Lease]) -> tuple[Renewal, set[str]]:
        """``held``'s leases renewed apart, after their one statement failed with a bug:
        what was found of them, and the ids of those that failed alone (logged)."""
        renewed: set[str] = set()
        locked: dict[str, float] = {}
        failed: set[str] = set()
        for lease in held:
            try:
                found = await self.node.leases_table.renew([lease])
            except Unavailable:
                raise
            except Exception:
                failed.add(lease.session_id)
                log.exception("lease renewal failed", extra={"session_id": lease.session_id})
                continue
            renewed |= found.renewed
            locked.update(found.locked)
        return Renewal(frozenset(renewed), locked), failed

    async def _take_over(self) -> None:
        """Take the replicas nobody runs any more, then the sessions with work and no live
        holder; none while this node drains (a healthy node's round takes them: FX72)."""
        node = self.node
        replicas = list(node.applied)
        node.live_elsewhere = await node.leases_table.live(replicas)
        if node.registry.draining:
            return
        for session_id in replicas:
            room = node.registry.loaded(session_id)
            if session_id not in node.live_elsewhere and room is not None:
                await node.promote(room)
        for session_id in await node.leases_table.orphaned():
            if node.registry.loaded(session_id) is None:
                try:
                    await node.registry.get(session_id)
                except Exception as exc:
                    log.warning(
                        "takeover failed",
                        extra={"session_id": session_id, "error": f"{type(exc).__name__}"},
                    )
