"""Cluster metrics, on the app's registry (``GET /metrics``)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge


class ClusterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.sessions_run = Gauge(
            "parley_cluster_sessions_run",
            "Sessions this node runs (holds the lease of)",
            registry=r,
        )
        self.sessions_followed = Gauge(
            "parley_cluster_sessions_followed",
            "Sessions this node follows as a replica",
            registry=r,
        )
        self.listener_up = Gauge(
            "parley_cluster_listener_up", "1 while the LISTEN connection is up", registry=r
        )
        self.taken = Counter(
            "parley_cluster_sessions_taken",
            "Leases this node took (first load or takeover)",
            registry=r,
        )
        self.lost = Counter(
            "parley_cluster_leases_lost", "Leases this node lost to another (fenced)", registry=r
        )
        self.renewals_skipped = Counter(
            "parley_cluster_lease_renewals_skipped",
            "Lease renewals skipped, never waited for, as another transaction (or a write of"
            " this node) held the lease row; each is asked again next round",
            registry=r,
        )
        self.forwarded = Counter(
            "parley_cluster_forwarded_commands",
            "Commands forwarded to the node running the session, by outcome",
            ["outcome"],
            registry=r,
        )

    def watch(
        self, run: Callable[[], int], followed: Callable[[], int], listener: Callable[[], bool]
    ) -> None:
        self.sessions_run.set_function(run)
        self.sessions_followed.set_function(followed)
        self.listener_up.set_function(lambda: float(listener()))
