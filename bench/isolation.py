"""Give the server under test a core of its own (``python -m bench.run --isolate``).

By default the server, the benchmark's client workers and its driver share the machine's
cores, as they do on a laptop. On two cores that makes a server's latency tail partly the
scheduler's: every frame it writes wakes a client worker, which may take the core the
server was running on, and the server waits its turn with a frame half sent (a profile of
the paced workload found the server's slow stretches at one to ten times their CPU time).
A production server does not share its cores with its clients. Isolated, every server
runs on the lowest-numbered CPU this process may use and the clients and the driver on
the others; the peers get the same treatment, so the servers still compare within a run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass


class IsolationError(RuntimeError):
    """The machine has too few CPUs to give the server one of its own."""


@dataclass(frozen=True)
class Isolation:
    server_cpus: frozenset[int]
    client_cpus: frozenset[int]

    def describe(self) -> dict[str, list[int]]:
        return {"server_cpus": sorted(self.server_cpus), "client_cpus": sorted(self.client_cpus)}

    def pin_server(self) -> Callable[[], None]:
        """For ``subprocess.Popen(preexec_fn=...)``: the child (and every thread it starts)
        runs on the server's CPUs only."""
        cpus = set(self.server_cpus)
        return lambda: os.sched_setaffinity(0, cpus)

    def pin_this_process(self) -> None:
        """This process and the client workers it spawns from now on keep off the server's
        CPUs (a child inherits its parent's affinity)."""
        os.sched_setaffinity(0, set(self.client_cpus))


def split(cpus: set[int] | frozenset[int] | None = None) -> Isolation:
    """The lowest CPU for the server, the rest for everything else."""
    available = set(os.sched_getaffinity(0) if cpus is None else cpus)
    if len(available) < 2:
        raise IsolationError(
            f"--isolate needs at least 2 CPUs; this process may use {len(available)}"
        )
    server = min(available)
    return Isolation(frozenset({server}), frozenset(available - {server}))
