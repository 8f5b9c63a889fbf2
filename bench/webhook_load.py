"""Session ack latency with event webhooks on, against a peer with none (issue #18).

Two Parley servers, each on its own SQLite database: ``hooks`` has one subscription to
every webhook type, pointed at a loopback receiver that answers each delivery after
``--receiver-delay-s`` (2 s); ``plain`` has no subscriber. Both run the whole time, but
they are *loaded in turn*, in blocks of ``--block-s`` (A B B A A B ...: each pair of
blocks swaps the order, so a drift of the machine falls on both): on a 2-core machine two
servers loaded at once each got about one core, and the load generator and the other's
sender shared them too, so neither kept up and no verdict came out. In its block a server
has the machine (the other only idles, and the hooks server's sender child goes on
delivering its backlog, as it would). Each block loads fresh sessions (``--sessions``)
with an open loop of members' prompts and messages paced to about ``--events-per-s``
semantic events; its first ``--warmup-s`` are not measured, and it ends once every
command is answered (or given up after 60 s).

Per server and block: the ack p50/p95/p99, the events per second it stored, its CPU
(the server, its sender child, and the load generator's own) and that CPU per stored
event. The comparison is by *pairs*: blocks 0-1, 2-3, ... hold one block of each server
next to each other in time, and each pair's ratio hooks / plain cancels what drifts over
the run (the machine's other jobs; the servers' growing databases and loaded sessions,
which made later blocks slower on both). The second block of a pair tends to be the
slower, so the pairs that start with each server weigh the same (use a multiple of 4
blocks): the ratio is the mean of the two orders' geometric means; the *noise* is how
far pairs of the same order fall from their order's mean (at least 10%); "unchanged
within noise" when the ratios of p50 and p95 are each no farther from 1 than their own
noise. A server that stores less than 90%
of the events asked for in any block, or leaves a command unanswered, is reported as
saturated, and then no verdict is given (its latency is its queue's). ``outbox`` shows
the backlog after each hooks block.

    python -m bench.webhook_load [--events-per-s 1000] [--block-s 25] [--blocks 8] \
        [--sessions 20] [--json bench/results/webhook-load-<date>.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.targets import process_cpu_seconds
from bench.webhook_rig import (
    Ack,
    HookTarget,
    Receiver,
    hook_target,
    paced_load,
    percentiles,
    receiving,
)

# Semantic events per command: a prompt is accepted, its run starts and completes (runs
# may answer several waiting prompts at once: the measured rate is what counts).
EVENTS_PER_PROMPT = 3
# A server is keeping up when it stores at least this share of the events asked for.
SUSTAINED = 0.9


def commands_per_s(events_per_s: float, prompt_share: float) -> float:
    return events_per_s / (EVENTS_PER_PROMPT * prompt_share + (1 - prompt_share))


def latencies(acks: list[Ack], since: float, until: float, kind: str | None = None) -> list[float]:
    return [
        a.latency_s
        for a in acks
        if a.latency_s is not None and since <= a.sent < until and kind in (None, a.kind)
    ]


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def ratios(top: dict[str, float | None], bottom: dict[str, float | None]) -> dict[str, Any]:
    return {k: ratio(top[k], bottom[k]) for k in top}


def block_figures(
    target: HookTarget, acks: list[Ack], since: float, until: float, wall: float
) -> dict[str, Any]:
    """One block's figures: ``since``/``until`` in ``time.monotonic()``, ``wall`` the
    offset of ``time.time()`` (the stored ``at_ms``)."""
    from_ms, to_ms = int((wall + since) * 1000), int((wall + until) * 1000)
    ((events,),) = target.query(
        "SELECT count(*) FROM session_events WHERE at_ms >= ? AND at_ms < ?", from_ms, to_ms
    )
    return {
        "acks": percentiles(latencies(acks, since, until)),
        "prompt_acks": percentiles(latencies(acks, since, until, "prompt")),
        "message_acks": percentiles(latencies(acks, since, until, "message")),
        "commands": len([a for a in acks if since <= a.sent < until]),
        "refused_or_lost": sorted({a.error for a in acks if a.error})[:5],
        "refused_or_lost_count": sum(1 for a in acks if a.error),
        "events_per_s": round(events / (until - since), 1),
    }


def child_cpu_seconds(pid: int) -> float:
    """CPU time of the children of ``pid`` (the sender's process) alive now."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    total = 0.0
    for child in children:
        with contextlib.suppress(OSError):
            total += process_cpu_seconds(int(child))
    return total


def median_of(blocks: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    """Per percentile, the median over ``blocks`` of ``block[key]``."""
    out: dict[str, float | None] = {}
    for name in ("p50_ms", "p95_ms", "p99_ms"):
        values = [b[key][name] for b in blocks if b[key][name] is not None]
        out[name] = round(statistics.median(values), 2) if values else None
    return out


def paired(blocks: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Blocks 0-1, 2-3, ... hold one of each server next to each other in time: each
    pair's ratio hooks / plain cancels what drifts over the run (the machine's other
    jobs, the servers' growing databases and loaded sessions). Within a pair the second
    block tends to be slower, so the pairs are grouped by which server went first and each
    order weighs the same. Per percentile: each pair's ratio, the ratio (the mean of the
    two orders' geometric means), the order effect (what the balance cancels), and the
    noise (how far pairs of the same order fall from their order's mean; a fraction)."""
    by_block = {b["block"]: b for name in ("hooks", "plain") for b in blocks[name]}
    hooks_blocks = {b["block"] for b in blocks["hooks"]}
    out: dict[str, Any] = {}
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        orders: dict[bool, list[float]] = {True: [], False: []}  # hooks first: log ratios
        pair_ratios = []
        for first in range(0, len(by_block) - 1, 2):
            hooks_first = first in hooks_blocks
            h, p = (first, first + 1) if hooks_first else (first + 1, first)
            a, b = by_block[h]["acks"][key], by_block[p]["acks"][key]
            if a and b:
                pair_ratios.append(round(a / b, 3))
                orders[hooks_first].append(math.log(a / b))
        means = {o: statistics.fmean(logs) for o, logs in orders.items() if logs}
        if not means:
            out[key] = {"pairs": [], "ratio": None, "order_effect": None, "noise": None}
            continue
        spread = max(abs(x - means[o]) for o, logs in orders.items() for x in logs)
        out[key] = {
            "pairs": pair_ratios,
            "ratio": round(math.exp(statistics.fmean(means.values())), 3),
            "order_effect": (
                round(math.exp(abs(means[True] - means[False]) / 2), 3) if len(means) == 2 else None
            ),
            "noise": round(math.exp(spread) - 1, 3),
        }
    return out


async def load_block(target: HookTarget, args: argparse.Namespace, rate: float) -> dict[str, Any]:
    """Fresh sessions on ``target``, loaded for one block; its figures."""
    assert target.process is not None
    rooms = await target.make_rooms(args.sessions, 0)
    await asyncio.sleep(args.settle_s)
    cpu = (target.cpu_seconds(), child_cpu_seconds(target.process.pid), time.process_time())
    started = time.monotonic()
    wall = time.time() - started
    acks = await paced_load(rooms, rate, args.block_s, args.prompt_share)
    answered = time.monotonic()
    used = (target.cpu_seconds(), child_cpu_seconds(target.process.pid), time.process_time())
    await target.close_rooms(rooms)
    since, until = started + args.warmup_s, started + args.block_s
    figures = block_figures(target, acks, since, until, wall)
    figures["cpu_s"] = {
        name: round(after - before, 2)
        for name, before, after in zip(
            ("server", "sender", "load_generator"), cpu, used, strict=True
        )
    }
    figures["answered_after_s"] = round(answered - started, 1)
    # Every event the block's load made (stored by its last ack): the CPU each cost.
    ((made,),) = target.query(
        "SELECT count(*) FROM session_events WHERE at_ms >= ? AND at_ms <= ?",
        int((wall + started) * 1000),
        int((wall + answered) * 1000),
    )
    figures["events_stored"] = made
    figures["server_cpu_ms_per_event"] = round(1000 * figures["cpu_s"]["server"] / max(1, made), 3)
    return figures


def outbox_now(target: HookTarget, receiver: Receiver) -> dict[str, Any]:
    by_status = dict(
        target.query("SELECT status, count(*) FROM webhook_deliveries GROUP BY status")
    )
    return {"by_status": by_status, "received": len(receiver.arrivals)}


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    receiver = Receiver(delay_s=args.receiver_delay_s)
    hooks = hook_target("hooks", workdir)
    plain = hook_target("plain", workdir)
    blocks: dict[str, list[dict[str, Any]]] = {"hooks": [], "plain": []}
    backlog: list[dict[str, Any]] = []
    rate = commands_per_s(args.events_per_s, args.prompt_share)
    async with receiving(receiver):
        await asyncio.gather(hooks.start(), plain.start())
        try:
            hook = await hooks.subscribe(receiver.url)
            if args.paused:  # deliveries are written with each event, never sent
                assert hooks.http is not None
                paused = await hooks.http.patch(
                    f"/api/v1/webhooks/{hook['id']}", json={"status": "paused"}
                )
                paused.raise_for_status()
            for index in range(args.blocks):
                # A B, B A, A B, ...: the order swaps with each pair of blocks.
                first, second = (hooks, plain) if index // 2 % 2 == 0 else (plain, hooks)
                target = first if index % 2 == 0 else second
                figures = await load_block(target, args, rate)
                figures["block"] = index
                blocks[target.name].append(figures)
                if target is hooks:
                    backlog.append({"block": index, **outbox_now(hooks, receiver)})
                print(
                    f"block {index} {target.name}: {figures['events_per_s']} events/s, "
                    f"acks {figures['acks']}, cpu {figures['cpu_s']}",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            await asyncio.gather(hooks.stop(), plain.stop())
    return verdict(args, blocks, backlog, receiver)


def verdict(
    args: argparse.Namespace,
    blocks: dict[str, list[dict[str, Any]]],
    backlog: list[dict[str, Any]],
    receiver: Receiver,
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name, mine in blocks.items():
        figures[name] = {
            "acks_median_of_blocks": median_of(mine, "acks"),
            "prompt_acks_median_of_blocks": median_of(mine, "prompt_acks"),
            "message_acks_median_of_blocks": median_of(mine, "message_acks"),
            "events_per_s": [b["events_per_s"] for b in mine],
            "blocks": mine,
        }
    figures["ratio_of_medians_hooks_over_plain"] = {
        key: ratios(figures["hooks"][key], figures["plain"][key])
        for key in (
            "acks_median_of_blocks",
            "prompt_acks_median_of_blocks",
            "message_acks_median_of_blocks",
        )
    }
    pairs = paired(blocks)
    figures["paired_ratio_hooks_over_plain"] = pairs
    # Each of p50 and p95 against its own noise (at least 10%).
    head = [pairs[k] for k in ("p50_ms", "p95_ms") if pairs[k]["ratio"] is not None]
    bands = [max(0.10, h["noise"]) for h in head]
    within = [
        abs(math.log(h["ratio"])) <= math.log(1 + b) for h, b in zip(head, bands, strict=True)
    ]
    figures["settings"] = {
        "sessions_per_block": args.sessions,
        "target_events_per_s": args.events_per_s,
        "commands_per_s": round(commands_per_s(args.events_per_s, args.prompt_share), 1),
        "prompt_share": args.prompt_share,
        "blocks": args.blocks,
        "block_s": args.block_s,
        "warmup_s": args.warmup_s,
        "receiver_delay_s": args.receiver_delay_s,
        "subscription": "paused" if args.paused else "active",
    }
    figures["outbox"] = {
        "after_each_hooks_block": backlog,
        "received": len(receiver.arrivals),
        "receiver_most_in_flight": receiver.most_in_flight,
    }
    # A server that cannot keep up measures its queue, not the webhooks: no verdict then.
    saturated = [
        name
        for name in ("hooks", "plain")
        if any(
            b["refused_or_lost_count"] or b["events_per_s"] < SUSTAINED * args.events_per_s
            for b in blocks[name]
        )
    ]
    figures["saturated"] = saturated
    figures["noise_band"] = [round(b, 3) for b in bands]  # p50, p95
    figures["unchanged_within_noise"] = None if saturated or not head else all(within)
    figures["uptime"] = Path("/proc/loadavg").read_text().split()[:3]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--events-per-s", type=float, default=1000.0)
    parser.add_argument("--prompt-share", type=float, default=0.25)
    parser.add_argument("--blocks", type=int, default=8, help="blocks in all (a multiple of 4)")
    parser.add_argument("--block-s", type=float, default=25.0)
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--settle-s", type=float, default=1.0, help="pause before a block")
    parser.add_argument("--receiver-delay-s", type=float, default=2.0)
    parser.add_argument(
        "--paused",
        action="store_true",
        help="pause the subscription: the outbox is written, nothing sent (its cost alone)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="webhook-load-") as workdir:
        figures = asyncio.run(measure(args, Path(workdir)))
    text = json.dumps(figures, indent=1)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
