"""The workloads: each sets up its rooms and sockets once, then measures ``runs`` times.

Every time is ``time.monotonic()`` read in the process where the event happened (server,
writer or client); on Linux that clock is one clock for every process on the machine.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from array import array
from dataclasses import dataclass
from typing import Any

from bench.clients import ClientPool
from bench.targets import ParleyTarget, Room, Target

# The paced rounds' p99 is also given by phase: the tokens yielded in the first and the last
# PHASE_S of the round (the runs starting and ending: prompts admitted, contexts built, runs
# settled, for Parley) and those between (streaming only).
PHASE_S = 0.5
PHASES = ("start", "steady", "end")


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest rank; NaN of nothing."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per key, the median over runs."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


async def _connect(pool: ClientPool, rooms: list[Room], layout: str) -> list[list[int]]:
    """Connect every room's subscribers, dealt over the shards; returns, per shard, the
    room index of each of its sockets in order."""
    pairs = [(i, url) for i, room in enumerate(rooms) for url in room.subscriber_urls]
    shards = pool.split(pairs)
    timeout_s = 60 + len(pairs) / 50
    await pool.call(
        "connect",
        [{"urls": [u for _, u in s], "layout": layout, "timeout_s": timeout_s} for s in shards],
    )
    return [[i for i, _ in s] for s in shards]


@dataclass(frozen=True)
class _UsageMark:
    """CPU and scheduling counters at the start of a measured round."""

    server_s: float
    clients_s: float
    switches: tuple[int, int]
    at: float

    @classmethod
    def now(cls, target: Target, pool: ClientPool) -> _UsageMark:
        return cls(target.cpu_seconds(), pool.cpu_seconds(), target.switches(), time.monotonic())


def _cpu_percent(
    before: _UsageMark, target: Target, pool: ClientPool, updates: list[int]
) -> dict[str, float]:
    """The server's and the client workers' CPU use since ``before``, in % of one core, and
    the server's CPU per update it sent (``updates``: each socket's count applied), in µs:
    what a batching server saves per delivery shows here, not in deliveries/s alone. With
    them, how often a second the server's main thread slept (waits: its loop was idle) and
    was taken off a core it could have run on (preempted: by the clients it woke, on a
    machine they share): a server that never waits is behind, whatever its CPU share."""
    elapsed = max(time.monotonic() - before.at, 1e-9)
    server_s = target.cpu_seconds() - before.server_s
    waits, preempted = (a - b for a, b in zip(target.switches(), before.switches, strict=True))
    sent = sum(updates)
    return {
        "server_cpu_percent": 100 * server_s / elapsed,
        "clients_cpu_percent": 100 * (pool.cpu_seconds() - before.clients_s) / elapsed,
        "server_cpu_us_per_update": 1e6 * server_s / sent if sent else float("nan"),
        "server_waits_per_s": waits / elapsed,
        "server_preempted_per_s": preempted / elapsed,
    }


async def _round(
    target: Target,
    pool: ClientPool,
    rooms: list[Room],
    tokens: int,
    rate: float,
    timeout_s: float,
) -> tuple[list[list[float]], list[array[float]], list[int]]:
    """Arm the subscribers, start every room's writer, wait for the tokens to arrive, then
    for the writers' times (asked only now: ``ParleyTarget._yields``). Returns each room's
    yield times, and each socket's hold times and count of updates applied (sockets per
    shard, in order)."""
    await pool.call_all("arm", tokens=tokens)
    writers = [target.write(room, tokens, rate) for room in rooms]
    packed = await pool.call_all("collect", timeout_s=timeout_s)
    async with asyncio.timeout(timeout_s + 30):
        yields = list(await asyncio.gather(*writers))
    holds = []
    updates = []
    for shard in packed:
        for raw, applied in shard:
            values: array[float] = array("d")
            values.frombytes(raw)
            holds.append(values)
            updates.append(applied)
    return yields, holds, updates


async def fanout_saturated(
    target: Target, pool: ClientPool, subscribers: int, tokens: int, runs: int
) -> dict[str, Any]:
    """One room, ``subscribers`` sockets, one writer yielding ``tokens`` as fast as it can."""
    rooms = await target.make_rooms(1, subscribers)
    await _connect(pool, rooms, target.layout)
    timeout_s = 30 + subscribers * tokens / 5000
    measured = []
    try:
        for _ in range(runs):
            cpu_before = _UsageMark.now(target, pool)
            yields, holds, updates = await _round(target, pool, rooms, tokens, 0, timeout_s)
            cpu = _cpu_percent(cpu_before, target, pool, updates)
            first_yield = yields[0][0]
            complete = [h for h in holds if h[-1] > 0]
            held = sum(sum(1 for t in h if t > 0) for h in holds)
            last = max((t for h in holds for t in h), default=first_yield)
            spreads = []
            for index in range(tokens):
                times = [h[index] for h in holds if h[index] > 0]
                if times:
                    spreads.append(max(times) - min(times))
            delays = [h[i] - yields[0][i] for h in holds for i in range(tokens) if h[i] > 0]
            measured.append(
                {
                    "deliveries_per_s": held / max(last - first_yield, 1e-9),
                    "seconds": last - first_yield,
                    "writer_seconds": yields[0][-1] - first_yield,
                    "spread_p50_ms": 1000 * percentile(spreads, 50),
                    "spread_p99_ms": 1000 * percentile(spreads, 99),
                    "delay_p50_ms": 1000 * percentile(delays, 50),
                    "delay_p99_ms": 1000 * percentile(delays, 99),
                    "complete_fraction": len(complete) / len(holds),
                    "updates_per_subscriber": statistics.median(updates),
                    **cpu,
                }
            )
    finally:
        await pool.call_all("close")
        await target.close_rooms(rooms)
    return {
        "subscribers": subscribers,
        "tokens": tokens,
        "runs": measured,
        "median": median_of(measured),
    }


async def fanout_paced(
    target: Target,
    pool: ClientPool,
    sessions: int,
    subscribers: int,
    rate: float,
    seconds: float,
    runs: int,
    grace_s: float = 60,
) -> dict[str, Any]:
    """``sessions`` rooms of ``subscribers`` sockets, each room's writer at ``rate`` tokens/s;
    tokens not held ``grace_s`` after the writers' last count as missing."""
    rooms = await target.make_rooms(sessions, subscribers)
    room_of = await _connect(pool, rooms, target.layout)
    tokens = max(1, round(rate * seconds))
    order = [room for shard in room_of for room in shard]
    measured = []
    try:
        for _ in range(runs):
            cpu_before = _UsageMark.now(target, pool)
            yields, holds, updates = await _round(
                target, pool, rooms, tokens, rate, seconds + grace_s
            )
            cpu = _cpu_percent(cpu_before, target, pool, updates)
            delays = []
            missing = 0
            first = min(times[0] for times in yields)
            last = max(times[-1] for times in yields)
            phases: tuple[list[float], list[float], list[float]] = ([], [], [])
            for room, held in zip(order, holds, strict=True):
                for index in range(tokens):
                    if held[index] > 0:
                        yielded = yields[room][index]
                        delay = held[index] - yielded
                        delays.append(delay)
                        starting, ending = yielded < first + PHASE_S, yielded > last - PHASE_S
                        phases[0 if starting else 2 if ending else 1].append(delay)
                    else:
                        missing += 1
            measured.append(
                {
                    "delay_p50_ms": 1000 * percentile(delays, 50),
                    "delay_p99_ms": 1000 * percentile(delays, 99),
                    "delay_max_ms": 1000 * max(delays, default=float("nan")),
                    **{
                        f"delay_p99_{name}_ms": 1000 * percentile(values, 99)
                        for name, values in zip(PHASES, phases, strict=True)
                    },
                    "missing_fraction": missing / (len(holds) * tokens),
                    "updates_per_subscriber": statistics.median(updates),
                    **cpu,
                }
            )
    finally:
        await pool.call_all("close")
        await target.close_rooms(rooms)
    return {
        "sessions": sessions,
        "subscribers_per_session": subscribers,
        "rate_tokens_per_s": rate,
        "tokens": tokens,
        "runs": measured,
        "median": median_of(measured),
    }


async def connections(
    target: Target, pool: ClientPool, count: int, per_room: int, hold_s: float
) -> dict[str, Any]:
    """Open ``count`` idle authenticated sockets (each synced), hold them, measure memory."""
    rooms = await target.make_rooms(max(1, count // per_room), per_room, driver=False)
    rss_before = target.rss_bytes()
    started = time.monotonic()
    try:
        await _connect(pool, rooms, "none")
        connect_s = time.monotonic() - started
        await asyncio.sleep(hold_s)
        open_now = sum(await pool.call_all("open_sockets"))
        rss_after = target.rss_bytes()
    finally:
        await pool.call_all("close")
    opened = len(rooms) * per_room
    return {
        "requested": opened,
        "held": open_now,
        "connect_per_s": opened / connect_s,
        "rss_before_mb": rss_before / 2**20,
        "rss_after_mb": rss_after / 2**20,
        "kb_per_connection": (rss_after - rss_before) / max(open_now, 1) / 1024,
    }


async def admission(
    target: ParleyTarget,
    pool: ClientPool,
    sessions: int,
    prompts_each: int,
    open_rate: float,
    open_count: int,
    runs: int,
) -> dict[str, Any]:
    """Prompts across ``sessions`` sessions (one editor socket each) with a one-token
    model: closed loop for throughput, then open loop at ``open_rate`` for latency."""
    rooms = await target.make_rooms(sessions, 1, driver=False, role="editor")
    await _connect(pool, rooms, "none")
    shards = len(pool.pipes)
    measured = []
    try:
        for run in range(runs):
            runs_before = await target.runs_finished()
            closed = await pool.call_all(
                "prompt_each", count=prompts_each, prefix=f"c{run}", timeout_s=120
            )
            sent = [r for shard in closed for r in shard]
            records = [r for r in sent if r[2] is not None]
            span = max(r[2] for r in records) - min(r[1] for r in records)
            # Let the closed loop's runs settle first (the model calls end well before
            # their reply and finish commits): the open loop measures admission at a
            # steady load, not behind a backlog of a thousand runs.
            await _runs_settled(target, runs_before + len(records), timeout_s=300)
            answered = await _finished_calls(target, [r[0] for r in records], timeout_s=60)
            # Acks alone say how fast prompts are stored; a server may ack and leave the
            # runs behind. Answered: until the last of these runs had its model's token.
            last_token = max(answered[r[0]]["yields"][-1] for r in records if r[0] in answered)
            target.finished.clear()
            opened = await pool.call(
                "prompt_open_loop",
                [
                    {
                        "rate": open_rate / shards,
                        "count": open_count // shards,
                        "prefix": f"o{run}s{shard}",
                        "timeout_s": 60,
                        "seed": run * shards + shard,
                    }
                    for shard in range(shards)
                ],
            )
            latency = [r for shard in opened for r in shard]
            acks = [r[2] - r[1] for r in latency if r[2] is not None]
            starts, after_ack = await _model_starts(target, latency)
            measured.append(
                {
                    "prompts_per_s": len(records) / span,
                    "answered_per_s": len(records) / (last_token - min(r[1] for r in records)),
                    "saturated_ack_p50_ms": 1000 * percentile([r[2] - r[1] for r in records], 50),
                    "ack_p50_ms": 1000 * percentile(acks, 50),
                    "ack_p99_ms": 1000 * percentile(acks, 99),
                    "start_p50_ms": 1000 * percentile(starts, 50),
                    "start_p99_ms": 1000 * percentile(starts, 99),
                    "ack_to_start_p50_ms": 1000 * percentile(after_ack, 50),
                    "ack_to_start_p99_ms": 1000 * percentile(after_ack, 99),
                    "unacked": float(len(latency) - len(acks) + len(sent) - len(records)),
                }
            )
    finally:
        await pool.call_all("close")
    return {
        "sessions": sessions,
        "closed_loop_prompts": sessions * prompts_each,
        "open_loop_rate_per_s": open_rate,
        "open_loop_prompts": (open_count // shards) * shards,
        "runs": measured,
        "median": median_of(measured),
    }


async def _runs_settled(target: ParleyTarget, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    settled = await target.runs_finished()
    while time.monotonic() < deadline and settled < count:
        await asyncio.sleep(0.1)
        settled = await target.runs_finished()


async def _finished_calls(
    target: ParleyTarget, call_ids: list[str], timeout_s: float
) -> dict[str, Any]:
    """Wait (within ``timeout_s``) until the bench provider has finished these calls."""
    deadline = time.monotonic() + timeout_s
    finished = await target.records()
    while time.monotonic() < deadline and not all(c in finished for c in call_ids):
        await asyncio.sleep(0.1)
        finished = await target.records()
    return finished


async def _model_starts(
    target: ParleyTarget, latency: list[list[Any]]
) -> tuple[list[float], list[float]]:
    """From each open-loop prompt's send to its model call starting (the provider's
    record), and from its ack (as the client read it) to that start: negative when the
    model was asked before the ack reached the client."""
    wanted = {r[0]: r[1] for r in latency}
    acked = {r[0]: r[2] for r in latency if r[2] is not None}
    finished = await _finished_calls(target, list(wanted), timeout_s=120)
    starts = [finished[c]["started"] - sent for c, sent in wanted.items() if c in finished]
    after_ack = [finished[c]["started"] - at for c, at in acked.items() if c in finished]
    target.finished.clear()
    return starts, after_ack
