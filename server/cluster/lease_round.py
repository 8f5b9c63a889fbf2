"""A cluster node's periodic round, every quarter of ``lease_ttl_s``: renew the leases it
holds (a lease it could not renew is lost), take over sessions whose holder stopped renewing
(its replicas first, then any session with work and no live holder), and, less often, look
at everything again (the safety net for a missed notification), put the stored settings in
force on its rooms and forget the forwarded commands answered long ago.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from parley.session.errors import NotFound

if TYPE_CHECKING:
    from parley.server.cluster.node import ClusterNode

log = logging.getLogger("parley.cluster")

ANSWERED_KEPT_S = 600


class LeaseRound:
    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    async def run(self) -> None:
        node = self.node
        interval = node.settings.lease_ttl_s / 4
        last_poll = 0.0
        last_cleanup = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            try:
                await self._keep_leases()
                await self._take_over()
                now = time.monotonic()
                if now - last_poll >= node.settings.cluster_poll_s:
                    last_poll = now
                    node.look_again()  # the safety net for a missed notification
                    await self._refresh_members()
                if now - last_cleanup >= ANSWERED_KEPT_S / 10:
                    last_cleanup = now
                    cutoff = int((time.time() - ANSWERED_KEPT_S) * 1000)
                    await node.relay.table.forget_answered(cutoff)
            except Exception as exc:
                log.warning("lease round failed", extra={"error": f"{type(exc).__name__}: {exc}"})

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
        node = self.node
        held = list(node.leases.values())
        asked_at = time.monotonic()
        kept = await node.leases_table.renew(held)
        node.renewed([x for x in held if x.session_id in kept], asked_at)
        for lease in held:
            if lease.session_id not in kept:
                node.lost(lease.session_id, lease)

    async def _take_over(self) -> None:
        node = self.node
        replicas = list(node.applied)
        node.live_elsewhere = await node.leases_table.live(replicas)
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
