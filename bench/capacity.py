"""Capacity: how many streaming sessions one server serves within a latency limit.

Each session has ``subscribers`` sockets and a writer streaming at ``rate`` tokens/s (for
Parley, a model reply; for the peers, a writer client per room). A step with ``n``
sessions passes when the p99 delay from a token's yield to a subscriber holding it is
under ``limit_ms`` and no token is missing. The count doubles from ``start`` until a step
fails (or ``ceiling``), then is bisected between the last pass and the first failure until
the gap is within ``resolution`` of the pass. The answer is the largest count that
passed: the figure an operator sizes a cluster by.

The clients share the machine with the server, so each step also reports both CPU
shares: when the clients' share nears the cores left, the client is the limit, not the
server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.clients import ClientPool
from bench.targets import Target
from bench.workloads import fanout_paced


@dataclass(frozen=True)
class CapacityPlan:
    subscribers: int = 25
    rate: float = 50
    seconds: float = 5
    limit_ms: float = 100
    start: int = 10
    ceiling: int = 640
    resolution: float = 0.125  # stop bisecting when the gap is within this share of a pass
    grace_s: float = 10  # a token not held this long after the writers end is missing


def passed(step: dict[str, Any], limit_ms: float) -> bool:
    """Whether a step kept every token and its p99 under the limit."""
    if step.get("error"):
        return False
    return bool(step["missing_fraction"] == 0 and step["delay_p99_ms"] < limit_ms)


def next_count(passes: int, failure: int | None, plan: CapacityPlan) -> int | None:
    """The session count to try next; None when the answer is found."""
    if failure is None:
        if passes == 0:
            return plan.start
        doubled = passes * 2
        return doubled if doubled <= plan.ceiling else None
    if failure - passes <= max(1, passes * plan.resolution):
        return None
    return (passes + failure) // 2


async def capacity(target: Target, pool: ClientPool, plan: CapacityPlan) -> dict[str, Any]:
    """Step the number of sessions as the module says; every step is in ``steps``."""
    steps: list[dict[str, Any]] = []
    passes, failure = 0, None
    while (count := next_count(passes, failure, plan)) is not None:
        print(f"    {count} sessions", flush=True)
        try:
            got = await fanout_paced(
                target,
                pool,
                count,
                plan.subscribers,
                plan.rate,
                plan.seconds,
                runs=1,
                grace_s=plan.grace_s,
            )
            step: dict[str, Any] = {"sessions": count, **got["median"]}
        except (TimeoutError, ConnectionError, OSError) as exc:
            step = {"sessions": count, "error": f"{type(exc).__name__}: {exc}"[:300]}
        step["passed"] = passed(step, plan.limit_ms)
        steps.append(step)
        if step["passed"]:
            passes = count
        else:
            failure = count
            if passes == 0:  # even the first step fails: nothing to bisect towards
                break
    return {
        "sessions": passes,
        "first_failure": failure,
        "subscribers_per_session": plan.subscribers,
        "rate_tokens_per_s": plan.rate,
        "seconds": plan.seconds,
        "limit_ms": plan.limit_ms,
        "steps": steps,
    }
