"""A webhook receiver down for a while, then back (issue #18): every event of that time
arrives, in per-session order, duplicates only under the same ``webhook-id``.

Starts one Parley server with one subscription to every webhook type and sends members'
prompts and messages at ``--events-per-s`` for ``--before-s``, the outage (the receiver
stops listening for ``--outage-s``, 120 s by default) and ``--after-s``; then waits until
the outbox is empty. Each delivery is verified with the ``standardwebhooks`` package and
checked against the session events the server stored. Retries use the server's settings
except ``--retry-max-s`` (the back-off's ceiling; the default is an hour).

    python -m bench.webhook_outage [--outage-s 120] [--sessions 10] [--events-per-s 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook

from bench.webhook_load import commands_per_s
from bench.webhook_rig import Arrival, Receiver, hook_target, paced_load, receiving
from parley.session.webhook_events import SESSION_CREATED, TYPES, webhook_types

DRAIN_POLL_S = 0.5


def expected_deliveries(
    rows: list[tuple[Any, ...]], sessions: list[str]
) -> set[tuple[str, int, str]]:
    """(session, event seq, webhook type) of every stored event a subscription to every
    type is told, and each session's creation (event seq 0)."""
    expected = {(sid, 0, SESSION_CREATED) for sid in sessions}
    for session_id, seq, kind, data in rows:
        for told in webhook_types(kind, json.loads(data)):
            expected.add((session_id, int(seq), told))
    return expected


def check(arrivals: list[Arrival], expected: set[tuple[str, int, str]]) -> dict[str, Any]:
    """Compare what arrived (verified on arrival), in arrival order, with what was
    expected."""
    bodies: dict[str, bytes] = {}
    differing_duplicates = 0
    duplicates = 0
    first: list[tuple[str, int, str]] = []
    for arrival in arrivals:
        if arrival.message_id in bodies:
            duplicates += 1
            differing_duplicates += bodies[arrival.message_id] != arrival.body
            continue
        bodies[arrival.message_id] = arrival.body
        assert arrival.payload is not None  # the receiver verified it
        data = arrival.payload["data"]
        first.append((data["session_id"], int(data["event_seq"]), arrival.payload["type"]))
    per_session: dict[str, list[int]] = defaultdict(list)
    for session_id, seq, _ in first:
        per_session[session_id].append(seq)
    out_of_order = sum(1 for seqs in per_session.values() if seqs != sorted(seqs))
    got = set(first)
    return {
        "expected": len(expected),
        "received_distinct": len(got),
        "missing": len(expected - got),
        "unexpected": len(got - expected),
        "duplicates_same_id": duplicates,
        "duplicates_with_other_body": differing_duplicates,
        "sessions_out_of_order": out_of_order,
    }


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    receiver = Receiver()
    server = hook_target(
        "outage",
        workdir,
        PARLEY_WEBHOOK_RETRY_MAX_S=str(args.retry_max_s),
        PARLEY_WEBHOOK_RETRY_BASE_S=str(args.retry_base_s),
    )
    async with receiving(receiver):
        await server.start()
        try:
            hook = await server.subscribe(receiver.url, sorted(TYPES))
            receiver.verifier = Webhook(hook["secret"])
            rooms = await server.make_rooms(args.sessions, 0)
            rate = commands_per_s(args.events_per_s, args.prompt_share)
            total_s = args.before_s + args.outage_s + args.after_s
            load = asyncio.create_task(paced_load(rooms, rate, total_s, args.prompt_share))
            await asyncio.sleep(args.before_s)
            await receiver.down()
            down_at, wall_down = time.monotonic(), time.time()
            await asyncio.sleep(args.outage_s)
            # Read before ``up``: the receiver may serve a retry as soon as it listens,
            # before ``up`` sees it started; that one arrived after the outage.
            up_at, wall_up = time.monotonic(), time.time()
            await receiver.up()
            acks = await load
            drained_s: float | None = None
            deadline = time.monotonic() + args.drain_timeout_s
            while time.monotonic() < deadline:
                ((unfinished,),) = server.query(
                    "SELECT count(*) FROM webhook_deliveries WHERE status IN ('pending', 'sending')"
                )
                if unfinished == 0:
                    drained_s = time.monotonic() - up_at
                    break
                await asyncio.sleep(DRAIN_POLL_S)
            sessions = [room.name for room in rooms]
            stored = server.query("SELECT session_id, seq, kind, data FROM session_events")
            ((during,),) = server.query(
                "SELECT count(*) FROM session_events WHERE at_ms >= ? AND at_ms < ?",
                int(wall_down * 1000),
                int(wall_up * 1000),
            )
            by_status = dict(
                server.query("SELECT status, count(*) FROM webhook_deliveries GROUP BY status")
            )
            ((most_attempts, attempts),) = server.query(
                "SELECT max(attempts), sum(attempts) FROM webhook_deliveries"
            )
            ((status, reason),) = server.query("SELECT status, disabled_reason FROM webhooks")
        finally:
            await server.stop()
    during_outage = [a for a in receiver.arrivals if down_at <= a.at < up_at]
    verdict = check(receiver.arrivals, expected_deliveries(stored, sessions))
    return {
        "settings": {
            "sessions": args.sessions,
            "events_per_s": args.events_per_s,
            "outage_s": args.outage_s,
            "retry_base_s": args.retry_base_s,
            "retry_max_s": args.retry_max_s,
        },
        "events_stored": len(stored),
        "events_during_outage": during,
        "acks_refused_or_lost": sum(1 for a in acks if a.error),
        "deliveries_by_status": by_status,
        "attempts_total": attempts,
        "attempts_most_for_one": most_attempts,
        "subscription_status": status,
        "disabled_reason": reason,
        "arrived_while_down": len(during_outage),
        "bad_signatures": receiver.bad_signatures,
        "drained_s_after_receiver_back": None if drained_s is None else round(drained_s, 1),
        **verdict,
        "ok": drained_s is not None
        and receiver.bad_signatures == 0
        and verdict["missing"] == 0
        and verdict["unexpected"] == 0
        and verdict["duplicates_with_other_body"] == 0
        and verdict["sessions_out_of_order"] == 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage-s", type=float, default=120.0)
    parser.add_argument("--before-s", type=float, default=5.0)
    parser.add_argument("--after-s", type=float, default=5.0)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--events-per-s", type=float, default=50.0)
    parser.add_argument("--prompt-share", type=float, default=0.5)
    parser.add_argument("--retry-base-s", type=float, default=5.0)
    parser.add_argument("--retry-max-s", type=float, default=30.0)
    parser.add_argument("--drain-timeout-s", type=float, default=600.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="webhook-outage-") as workdir:
        print(json.dumps(asyncio.run(measure(args, Path(workdir))), indent=1))


if __name__ == "__main__":
    main()
