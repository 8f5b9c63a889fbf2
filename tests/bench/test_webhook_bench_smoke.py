"""The event webhook benchmarks at tiny sizes: each runs end to end and measures."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import webhook_load, webhook_outage


async def test_webhook_load_compares_ack_latency_with_a_peer_without_subscribers(
    tmp_path: Path,
) -> None:
    args = argparse.Namespace(
        sessions=2,
        events_per_s=30.0,
        prompt_share=0.5,
        blocks=2,
        block_s=2.0,
        warmup_s=0.5,
        settle_s=0.1,
        receiver_delay_s=0.3,
        paused=False,
    )
    figures = await webhook_load.measure(args, tmp_path)
    for name in ("hooks", "plain"):
        (block,) = figures[name]["blocks"]  # loaded in turn: one block each
        assert block["commands"] > 0
        assert block["refused_or_lost_count"] == 0
        assert block["events_per_s"] > 0
        assert block["cpu_s"]["server"] > 0
        assert figures[name]["acks_median_of_blocks"]["p50_ms"] is not None
    assert figures["hooks"]["blocks"][0]["block"] == 0  # A B: hooks first
    ratio = figures["ratio_of_medians_hooks_over_plain"]["acks_median_of_blocks"]
    assert set(ratio) == {"p50_ms", "p95_ms", "p99_ms"}
    (pair,) = figures["paired_ratio_hooks_over_plain"]["p50_ms"]["pairs"]  # blocks 0-1
    assert pair > 0
    (after,) = figures["outbox"]["after_each_hooks_block"]
    assert sum(after["by_status"].values()) > 0  # each event's deliveries were written
    # How many reached the receiver by the end is a figure, not checked: the sender's
    # process starts at the first delivery and, on a loaded machine, may not have sent one
    # within these few seconds. That every event is delivered is the outage test's check.
    assert isinstance(figures["outbox"]["received"], int)
    assert figures["unchanged_within_noise"] in (True, False, None)  # None: saturated


async def test_webhook_outage_delivers_every_event_of_the_outage_in_order(
    tmp_path: Path,
) -> None:
    args = argparse.Namespace(
        outage_s=1.5,
        before_s=0.5,
        after_s=0.5,
        sessions=2,
        events_per_s=20.0,
        prompt_share=0.5,
        retry_base_s=0.1,
        retry_max_s=0.5,
        drain_timeout_s=60.0,
    )
    figures = await webhook_outage.measure(args, tmp_path)
    assert figures["events_during_outage"] > 0
    assert figures["arrived_while_down"] == 0
    assert figures["missing"] == 0 and figures["unexpected"] == 0
    assert figures["sessions_out_of_order"] == 0
    assert figures["duplicates_with_other_body"] == 0
    assert figures["received_distinct"] == figures["expected"] > 0
    assert figures["ok"] is True
