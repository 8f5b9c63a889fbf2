"""Session ack latency with event webhooks on, against a peer with none (issue #18).

Starts two Parley servers side by side, each on its own SQLite database: ``hooks`` has
one subscription to every webhook type, pointed at a loopback receiver that answers each
delivery after ``--receiver-delay-s`` (2 s); ``plain`` has no subscriber. Both get the
same open-loop load at the same time (so the machine's noise falls on both): members'
prompts and messages paced to about ``--events-per-s`` semantic events per server. It
reports the p50/p95/p99 of the command acks on each, their ratio (hooks / plain), the
noise (each server's first half against its second), and what the outbox did. A server
that stores less than 90% of the events asked for, or leaves a command unanswered, is
reported as saturated, and then no verdict is given (its latency is its queue's).

    python -m bench.webhook_load [--events-per-s 1000] [--duration-s 30] [--sessions 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

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


def server_figures(
    target: HookTarget, acks: list[Ack], since: float, until: float, wall: float
) -> dict[str, Any]:
    middle = (since + until) / 2
    from_ms, to_ms = int((wall + since) * 1000), int((wall + until) * 1000)
    ((events,),) = target.query(
        "SELECT count(*) FROM session_events WHERE at_ms >= ? AND at_ms < ?", from_ms, to_ms
    )
    return {
        "acks": percentiles(latencies(acks, since, until)),
        "prompt_acks": percentiles(latencies(acks, since, until, "prompt")),
        "message_acks": percentiles(latencies(acks, since, until, "message")),
        "first_half": percentiles(latencies(acks, since, middle)),
        "second_half": percentiles(latencies(acks, middle, until)),
        "commands": len([a for a in acks if since <= a.sent < until]),
        "refused_or_lost": sorted({a.error for a in acks if a.error})[:5],
        "refused_or_lost_count": sum(1 for a in acks if a.error),
        "events_per_s": round(events / (until - since), 1),
    }


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    receiver = Receiver(delay_s=args.receiver_delay_s)
    hooks = hook_target("hooks", workdir)
    plain = hook_target("plain", workdir)
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
            rooms = await asyncio.gather(
                hooks.make_rooms(args.sessions, 0), plain.make_rooms(args.sessions, 0)
            )
            rate = commands_per_s(args.events_per_s, args.prompt_share)
            # Monotonic time of the load's start; wall-clock offset for the stored at_ms.
            started = time.monotonic()
            wall = time.time() - started
            hook_acks, plain_acks = await asyncio.gather(
                *(paced_load(r, rate, args.duration_s, args.prompt_share) for r in rooms)
            )
            since, until = started + args.warmup_s, started + args.duration_s
            ((made,),) = hooks.query("SELECT count(*) FROM webhook_deliveries")
            by_status = dict(
                hooks.query("SELECT status, count(*) FROM webhook_deliveries GROUP BY status")
            )
            figures: dict[str, Any] = {
                "hooks": server_figures(hooks, hook_acks, since, until, wall),
                "plain": server_figures(plain, plain_acks, since, until, wall),
            }
        finally:
            await asyncio.gather(hooks.stop(), plain.stop())
    figures["ratio_hooks_over_plain"] = {
        "acks": ratios(figures["hooks"]["acks"], figures["plain"]["acks"]),
        "prompt_acks": ratios(figures["hooks"]["prompt_acks"], figures["plain"]["prompt_acks"]),
        "message_acks": ratios(figures["hooks"]["message_acks"], figures["plain"]["message_acks"]),
    }
    halves = [
        ratios(figures[name]["second_half"], figures[name]["first_half"])
        for name in ("hooks", "plain")
    ]
    noise = [abs(1 - r[k]) for r in halves for k in ("p50_ms", "p95_ms") if r[k] is not None]
    band = max([0.10, *noise])
    effect = [
        abs(1 - r)
        for k, r in figures["ratio_hooks_over_plain"]["acks"].items()
        if k != "p99_ms" and r is not None
    ]
    figures["settings"] = {
        "sessions_per_server": args.sessions,
        "target_events_per_s": args.events_per_s,
        "commands_per_s": round(commands_per_s(args.events_per_s, args.prompt_share), 1),
        "prompt_share": args.prompt_share,
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "receiver_delay_s": args.receiver_delay_s,
        "subscription": "paused" if args.paused else "active",
    }
    figures["outbox"] = {
        "deliveries_written": made,
        "by_status_at_end": by_status,
        "received": len(receiver.arrivals),
        "receiver_most_in_flight": receiver.most_in_flight,
    }
    # A server that cannot keep up measures its queue, not the webhooks: no verdict then.
    saturated = [
        name
        for name in ("hooks", "plain")
        if figures[name]["refused_or_lost_count"]
        or figures[name]["events_per_s"] < SUSTAINED * args.events_per_s
    ]
    figures["saturated"] = saturated
    figures["noise_band"] = round(band, 3)
    figures["unchanged_within_noise"] = None if saturated or not effect else max(effect) <= band
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--events-per-s", type=float, default=1000.0)
    parser.add_argument("--prompt-share", type=float, default=0.25)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--receiver-delay-s", type=float, default=2.0)
    parser.add_argument(
        "--paused",
        action="store_true",
        help="pause the subscription: the outbox is written, nothing sent (its cost alone)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="webhook-load-") as workdir:
        print(json.dumps(asyncio.run(measure(args, Path(workdir))), indent=1))


if __name__ == "__main__":
    main()
