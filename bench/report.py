"""The Markdown tables of one benchmark run (what docs/performance.md shows)."""

from __future__ import annotations

import math
from typing import Any

from bench.workloads import PHASE_S, PHASES

PARLEY = "parley"


def _cpu(got: dict[str, Any], who: str) -> str:
    """A CPU share in % of one core (older results have none)."""
    value = got.get(f"{who}_cpu_percent")
    return "" if value is None else f"{value:.0f}%"


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2013"
    return f"{value:,.{digits}f}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs or math.isnan(ours) or math.isnan(theirs):
        return "\u2013"
    return f"{ours / theirs:.2f}\u00d7"


def _by_size(result: dict[str, Any], key: str, size_key: str) -> dict[Any, dict[str, Any]]:
    return {entry[size_key]: entry["median"] for entry in result.get(key, [])}


def _placement(results: dict[str, Any]) -> str:
    """Where the server and the clients ran: the same cores, or apart (``--isolate``)."""
    shards = results["sizes"]["shards"]
    isolation = results.get("isolation")
    if isolation is None:
        return f"Server and clients share the cores (clients in {shards} processes)."
    server = ", ".join(str(c) for c in isolation["server_cpus"])
    clients = ", ".join(str(c) for c in isolation["client_cpus"])
    return (
        f"Each server on CPU {server} alone; the clients ({shards} processes) and the "
        f"driver on CPU {clients} (`--isolate`)."
    )


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    sizes = results["sizes"]
    servers: dict[str, Any] = results["servers"]
    peers = [s for s in servers if s != PARLEY]
    lines = [
        f"Run of {results['started_at']} ({results['mode']}): {m['cores']} cores, {m['cpu']}, "
        f"Python {m['python']}. Medians of {sizes['runs']} runs. {_placement(results)}",
        "",
    ]
    for name, reason in results.get("not_run", {}).items():
        lines.append(f"Not run: {name}: {reason}")
    if results.get("not_run"):
        lines.append("")

    if any("capacity" in r for r in servers.values()):
        plan = sizes["capacity"]
        lines += [
            f"**Capacity**: the most sessions one server streams at once, each with "
            f"{plan['subscribers']} subscribers and a writer at {plan['rate']:g} tokens/s for "
            f"{plan['seconds']:g} s, with the p99 delay from yield to subscriber under "
            f"{plan['limit_ms']:g} ms and no token missing (doubling from {plan['start']}, "
            "then bisecting). CPU is at the largest count that passed, in % of one core.",
            "",
            "| Server | Sessions | Subscribers | First failure | p99 | Server CPU | Clients' CPU |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, result in servers.items():
            got = result.get("capacity")
            if got is None:
                continue
            best = next((s for s in got["steps"] if s["sessions"] == got["sessions"]), {})
            failure = got["first_failure"]
            lines.append(
                f"| {name} | {got['sessions']:,} | "
                f"{got['sessions'] * got['subscribers_per_session']:,} | "
                f"{'none up to the ceiling' if failure is None else f'{failure:,}'} | "
                f"{_num(best.get('delay_p99_ms'), 1)} | {_cpu(best, 'server')} | "
                f"{_cpu(best, 'clients')} |"
            )
        lines.append("")

    if any("fanout" in r for r in servers.values()):
        lines += [
            f"**Token fan-out, saturated**: one session, {sizes['fanout_tokens']:,} tokens "
            "yielded as fast as the writer can; deliveries/s = subscribers \u00d7 tokens / time "
            "until the last subscriber holds the last token; spread = per token, last "
            "subscriber minus first (p50 / p99, ms).",
            "",
        ]
        head = "| Subscribers | Parley deliveries/s |"
        rule = "|---:|---:|"
        for peer in peers:
            head += f" {peer} | Parley ÷ {peer} |"
            rule += "---:|---:|"
        head += " Parley spread p50 / p99 |"
        rule += "---:|"
        for peer in peers:
            head += f" {peer} spread |"
            rule += "---:|"
        head += f" Updates per subscriber ({' / '.join([PARLEY, *peers])}) |"
        rule += "---:|"
        head += f" Server CPU per update sent, µs ({' / '.join([PARLEY, *peers])}) |"
        rule += "---:|"
        lines += [head, rule]
        fan = {name: _by_size(r, "fanout", "subscribers") for name, r in servers.items()}
        for n in sizes["fanout_subscribers"]:
            ours = fan.get(PARLEY, {}).get(n, {})
            row = f"| {n:,} | {_num(ours.get('deliveries_per_s'))} |"
            for peer in peers:
                theirs = fan.get(peer, {}).get(n, {})
                row += f" {_num(theirs.get('deliveries_per_s'))} |"
                row += f" {_ratio(ours.get('deliveries_per_s'), theirs.get('deliveries_per_s'))} |"
            for name in [PARLEY, *peers]:
                got = fan.get(name, {}).get(n, {})
                row += (
                    f" {_num(got.get('spread_p50_ms'), 1)} / {_num(got.get('spread_p99_ms'), 1)} |"
                )
            updates = [
                _num(fan.get(name, {}).get(n, {}).get("updates_per_subscriber"))
                for name in [PARLEY, *peers]
            ]
            row += f" {' / '.join(updates)} |"
            costs = [
                _num(fan.get(name, {}).get(n, {}).get("server_cpu_us_per_update"), 1)
                for name in [PARLEY, *peers]
            ]
            row += f" {' / '.join(costs)} |"
            lines.append(row)
        lines.append("")

    if any("paced" in r for r in servers.values()):
        lines += [
            f"**Token fan-out, paced**: {sizes['paced_sessions']} sessions \u00d7 "
            f"{sizes['paced_subscribers']} subscribers, each session's writer at a steady "
            f"rate for {sizes['paced_seconds']:g} s; delay from the writer yielding a token to "
            "each subscriber holding it (ms); its p99 also by when the token was yielded: in "
            f"the round's first {PHASE_S:g} s (the runs starting), its last {PHASE_S:g} s (the "
            "runs ending) and between.",
            "",
            "| Tokens/s per session | Server | p50 | p99 | max | tokens missing "
            "| Updates per subscriber | Server CPU | Server CPU per update sent (µs) "
            "| Clients' CPU | Server waits / preempted per s | p99 start / steady / end |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for rate in sizes["paced_rates"]:
            for name, result in servers.items():
                got = _by_size(result, "paced", "rate_tokens_per_s").get(rate)
                if got is None:
                    continue
                lines.append(
                    f"| {rate:g} | {name} | {_num(got['delay_p50_ms'], 1)} | "
                    f"{_num(got['delay_p99_ms'], 1)} | {_num(got['delay_max_ms'], 1)} | "
                    f"{got['missing_fraction']:.1%} | "
                    f"{_num(got.get('updates_per_subscriber'), 0)} | "
                    f"{_cpu(got, 'server')} | "
                    f"{_num(got.get('server_cpu_us_per_update'), 1)} | {_cpu(got, 'clients')} | "
                    f"{_num(got.get('server_waits_per_s'), 0)} / "
                    f"{_num(got.get('server_preempted_per_s'), 0)} | "
                    + " / ".join(_num(got.get(f"delay_p99_{p}_ms"), 1) for p in PHASES)
                    + " |"
                )
        lines.append("")

    if any("connections" in r for r in servers.values()):
        lines += [
            f"**Connections**: {sizes['connections']:,} idle sockets, each synced (Parley: "
            "each with a client token), held "
            f"{sizes['connections_hold_s']:g} s; memory is the server's resident set.",
            "",
            "| Server | Held | Resident memory per connection | Connects/s |",
            "|---|---:|---:|---:|",
        ]
        for name, result in servers.items():
            got = result.get("connections")
            if got is None:
                continue
            lines.append(
                f"| {name} | {got['held']:,} of {got['requested']:,} | "
                f"{_num(got['kb_per_connection'], 1)} kB | {_num(got['connect_per_s'])} |"
            )
        lines.append("")

    admission = results.get("admission")
    if admission:
        any_db = next(iter(admission.values()))
        lines += [
            f"**Prompt admission** (Parley): {any_db['sessions']:,} sessions, one editor "
            f"socket each, a one-token model. Prompts/s: {any_db['closed_loop_prompts']:,} "
            "prompts sent closed-loop (each socket's next prompt after its ack), acked per "
            "second; answered: per second until the last of their model calls had yielded "
            "its token. Latency: "
            f"{any_db['open_loop_prompts']:,} prompts at "
            f"{any_db['open_loop_rate_per_s']:g}/s open-loop (random gaps, as independent "
            "members send them), from the command to its ack "
            "and to its model call starting, and from each one's ack (as its client read "
            "it) to its model call starting: negative where the model was asked first (ms).",
            "",
            "| Database | Prompts/s | Answered/s | Ack p50 | Ack p99 | Model start p50 | "
            "Model start p99 | Ack → start p50 | Ack → start p99 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for database, result in admission.items():
            got = result["median"]
            lines.append(
                f"| {database} | {_num(got['prompts_per_s'])} | "
                f"{_num(got.get('answered_per_s'))} | {_num(got['ack_p50_ms'], 1)} | "
                f"{_num(got['ack_p99_ms'], 1)} | {_num(got['start_p50_ms'], 1)} | "
                f"{_num(got['start_p99_ms'], 1)} | {_num(got.get('ack_to_start_p50_ms'), 1)} | "
                f"{_num(got.get('ack_to_start_p99_ms'), 1)} |"
            )
        lines.append("")

    context = results.get("context_build")
    if context:
        lines += ["**Context build** (`bench/context_build.py`):", "", "| | |", "|---|---:|"]
        for key, value in context.items():
            shown = _num(value, 2) if isinstance(value, float) else str(value)
            lines.append(f"| {key} | {shown} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys
    from pathlib import Path

    # Render a results file again: python -m bench.report bench/results/<date>.json
    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
