"""The benchmark at tiny sizes: every workload runs end to end and measures something.

Parley always; each peer too when ``python -m bench.setup_peers`` has installed it (the
peers need network installs, so they are chosen when the tests are collected, never
skipped at run time).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench import run
from bench.capacity import CapacityPlan
from bench.clients import ClientPool
from bench.report import markdown
from bench.setup_peers import peers_ready

SIZES = run.Sizes(
    fanout_subscribers=[3],
    fanout_tokens=40,
    paced_rates=[200],
    paced_sessions=2,
    paced_subscribers=2,
    paced_seconds=0.3,
    connections=20,
    connections_per_room=10,
    connections_hold_s=0.2,
    admission_sessions=4,
    admission_prompts_each=2,
    admission_open_rate=40,
    admission_open_count=8,
    runs=1,
    shards=2,
    capacity=CapacityPlan(subscribers=2, seconds=0.3, start=1, ceiling=2),
)
SERVERS = [run.PARLEY, *(run.PEERS if peers_ready() else ())]


@pytest.fixture
async def pool() -> AsyncIterator[ClientPool]:
    clients = ClientPool(SIZES.shards)
    try:
        yield clients
    finally:
        await clients.close()


@pytest.mark.parametrize("server", SERVERS)
async def test_every_server_workload(server: str, pool: ClientPool, tmp_path: Path) -> None:
    chosen = {"capacity", "fanout", "paced", "connections"}
    result = await run.run_server(server, SIZES, chosen, pool, tmp_path)
    capacity = result["capacity"]
    assert [s["sessions"] for s in capacity["steps"]] == [1, 2]
    assert capacity["sessions"] == 2, capacity  # tiny loads pass: the ceiling is the answer
    assert capacity["first_failure"] is None
    (fanout,) = result["fanout"]
    assert fanout["median"]["complete_fraction"] == 1.0
    assert fanout["median"]["deliveries_per_s"] > 0
    # CPU time is counted in ticks: a tiny run may take none, never a NaN (nothing sent).
    assert fanout["median"]["server_cpu_us_per_update"] >= 0
    (paced,) = result["paced"]
    assert paced["tokens"] == 60
    assert paced["median"]["missing_fraction"] == 0.0
    assert 0 <= paced["median"]["delay_p50_ms"] <= paced["median"]["delay_p99_ms"]
    assert paced["median"]["server_cpu_us_per_update"] >= 0
    # Context switches of the server's main thread over the round: counted, never negative.
    assert paced["median"]["server_waits_per_s"] >= 0
    assert paced["median"]["server_preempted_per_s"] >= 0
    # A 0.3 s round is all start (its first PHASE_S): that phase's p99 is the round's.
    assert paced["median"]["delay_p99_start_ms"] == paced["median"]["delay_p99_ms"]
    assert math.isnan(paced["median"]["delay_p99_steady_ms"])
    connections = result["connections"]
    assert connections["held"] == connections["requested"] == 20


async def test_admission_on_sqlite(pool: ClientPool, tmp_path: Path) -> None:
    result = await run.run_admission(SIZES, pool, tmp_path, databases=("sqlite",))
    median = result["sqlite"]["median"]
    assert median["unacked"] == 0
    assert median["prompts_per_s"] > 0
    assert median["answered_per_s"] > 0
    assert not math.isnan(median["ack_to_start_p99_ms"])
    assert not math.isnan(median["start_p99_ms"])
    assert median["ack_p50_ms"] <= median["ack_p99_ms"]


def test_the_runner_runs_the_context_build_benchmark() -> None:
    result = run.run_context_build(quick=True)
    assert result["messages"] == 200
    assert result["facts_retained"] == result["facts_planted"]


def test_report_renders_every_section() -> None:
    fanout = {
        "deliveries_per_s": 1000.0,
        "spread_p50_ms": 1.0,
        "spread_p99_ms": 2.0,
        "updates_per_subscriber": 7,
        "server_cpu_us_per_update": 12.5,
    }
    paced = {
        "delay_p50_ms": 1.0,
        "delay_p99_ms": 2.0,
        "delay_max_ms": 3.0,
        "updates_per_subscriber": 250,
        "server_cpu_percent": 40.0,
        "server_cpu_us_per_update": 8.25,
        "clients_cpu_percent": 50.0,
        "server_waits_per_s": 120.4,
        "server_preempted_per_s": 2100.0,
    }
    results = {
        "started_at": "2026-01-01T00:00:00+00:00",
        "mode": "quick",
        "machine": {"cores": 2, "cpu": "test cpu", "python": "3.11"},
        "sizes": dataclasses.asdict(SIZES),
        "servers": {
            name: {
                "fanout": [{"subscribers": 3, "median": fanout}],
                "paced": [{"rate_tokens_per_s": 200, "median": {**paced, "missing_fraction": 0.0}}],
                "capacity": {
                    "sessions": 12,
                    "first_failure": 16,
                    "subscribers_per_session": 25,
                    "steps": [
                        {"sessions": 12, "delay_p99_ms": 40.0, "server_cpu_percent": 90.0},
                        {"sessions": 16, "delay_p99_ms": 140.0, "server_cpu_percent": 99.0},
                    ],
                },
                "connections": {
                    "held": 20,
                    "requested": 20,
                    "kb_per_connection": 9.0,
                    "connect_per_s": 100.0,
                },
            }
            for name in ("parley", "y-websocket")
        },
        "admission": {
            "sqlite": {
                "sessions": 4,
                "closed_loop_prompts": 8,
                "open_loop_prompts": 8,
                "open_loop_rate_per_s": 40,
                "median": {
                    "prompts_per_s": 50.0,
                    "answered_per_s": 40.0,
                    "ack_p50_ms": 1.0,
                    "ack_p99_ms": 2.0,
                    "start_p50_ms": 3.0,
                    "start_p99_ms": 4.0,
                    "ack_to_start_p50_ms": 0.5,
                    "ack_to_start_p99_ms": 1.5,
                },
            }
        },
        "context_build": {"entries": 100, "ms": 1.5},
        "not_run": {"pycrdt-websocket": "not installed"},
    }
    table = markdown(results)
    assert "| 3 | 1,000 | 1,000 | 1.00\u00d7 |" in table
    assert (
        "| 200 | y-websocket | 1.0 | 2.0 | 3.0 | 0.0% | 250 | 40% | 8.2 | 50% | 120 / 2,100 |"
        in table
    )
    assert "| 7 / 7 | 12.5 / 12.5 |" in table  # updates per subscriber, CPU per update
    assert "| sqlite | 50 | 40 | 1.0 | 2.0 | 3.0 | 4.0 | 0.5 | 1.5 |" in table
    assert "| ms | 1.50 |" in table
    assert "| y-websocket | 12 | 300 | 16 | 40.0 | 90% |  |" in table
    assert "Not run: pycrdt-websocket: not installed" in table


def test_a_full_runs_rooms_fit_the_bench_servers_member_budgets() -> None:
    """Every subscriber of a room is a socket of one member: the full run opens 500 (and
    100 a room for the idle connections) at once, where a member's budget lets a person
    open 32 (review: the full run failed at 100 subscribers, its upgrades refused 429)."""
    from bench.servers.parley_server import bench_settings

    settings = bench_settings()
    full = run.FULL
    room = max(*full.fanout_subscribers, full.connections_per_room, full.capacity.subscribers)
    opened = room * max(full.runs, 1) * 2  # each run's sockets, and as many reconnecting
    assert settings.socket_opens_burst >= opened
    # Their syncs: an empty document's answer and vector, a few bytes each.
    assert settings.sync_burst_bytes >= opened * 1024
