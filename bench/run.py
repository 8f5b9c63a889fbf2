"""Run every workload against Parley and its peers, write JSON and a Markdown table.

    python -m bench.run            # the full run (about 15 minutes on 2 cores)
    python -m bench.run --quick    # tiny sizes, a minute or so

Results go to ``bench/results/<date>.json`` and ``.md``. The peers are installed by
``bench.setup_peers`` on first use (a virtualenv and ``npm ci`` under ``bench/``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import resource
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench import workloads
from bench.capacity import CapacityPlan, capacity
from bench.clients import ClientPool
from bench.isolation import Isolation, IsolationError, split
from bench.report import markdown
from bench.setup_peers import PeerSetupError, setup_peers
from bench.targets import (
    BENCH_DIR,
    ParleyTarget,
    PycrdtWebsocketTarget,
    Target,
    YWebsocketTarget,
)

PARLEY = "parley"
PEERS = ("y-websocket", "pycrdt-websocket")
WORKLOADS = ("capacity", "fanout", "paced", "connections", "admission", "context")
SERVER_WORKLOADS = {"capacity", "fanout", "paced", "connections"}
POSTGRES_URL = os.environ.get(
    "PARLEY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@dataclass
class Sizes:
    fanout_subscribers: list[int]
    fanout_tokens: int
    paced_rates: list[float]
    paced_sessions: int
    paced_subscribers: int
    paced_seconds: float
    connections: int
    connections_per_room: int
    connections_hold_s: float
    admission_sessions: int
    admission_prompts_each: int
    admission_open_rate: float
    admission_open_count: int
    runs: int
    shards: int = 4
    capacity: CapacityPlan = field(default_factory=CapacityPlan)
    parley_database: str = "sqlite"  # for fan-out and connections; admission runs both


FULL = Sizes(
    fanout_subscribers=[1, 10, 100, 500],
    fanout_tokens=2000,
    paced_rates=[50, 200],
    paced_sessions=20,
    paced_subscribers=25,
    paced_seconds=5,
    connections=5000,
    connections_per_room=100,
    connections_hold_s=5,
    admission_sessions=1000,
    admission_prompts_each=1,
    admission_open_rate=50,
    admission_open_count=500,
    runs=3,
)
QUICK = Sizes(
    fanout_subscribers=[1, 10],
    fanout_tokens=100,
    paced_rates=[50, 200],
    paced_sessions=2,
    paced_subscribers=3,
    paced_seconds=1,
    connections=60,
    connections_per_room=20,
    connections_hold_s=0.5,
    admission_sessions=10,
    admission_prompts_each=2,
    admission_open_rate=50,
    admission_open_count=20,
    runs=1,
    shards=2,
    capacity=CapacityPlan(subscribers=3, seconds=0.5, start=1, ceiling=2),
)


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A scratch database on the local PostgreSQL, dropped afterwards."""
    name = f"parley_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(POSTGRES_URL, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = POSTGRES_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(POSTGRES_URL, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def make_target(
    name: str,
    workdir: Path,
    database_url: str | None = None,
    isolation: Isolation | None = None,
) -> Target:
    port = free_port()
    if name == PARLEY:
        url = database_url or f"sqlite+aiosqlite:///{workdir / f'parley-{port}.db'}"
        return ParleyTarget(name, port, workdir, isolation=isolation, database_url=url)
    if name == "y-websocket":
        return YWebsocketTarget(name, port, workdir, isolation=isolation)
    return PycrdtWebsocketTarget(name, port, workdir, isolation=isolation)


@contextlib.asynccontextmanager
async def running(target: Target) -> AsyncIterator[Target]:
    await target.start()
    try:
        yield target
    finally:
        await target.stop()


async def run_server(
    name: str,
    sizes: Sizes,
    chosen: set[str],
    pool: ClientPool,
    workdir: Path,
    isolation: Isolation | None = None,
) -> dict[str, Any]:
    """Capacity, fan-out (saturated and paced) and connections against one server."""
    result: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        url = None
        if name == PARLEY and sizes.parley_database == "postgresql":
            url = await stack.enter_async_context(postgres_database())
        target = make_target(name, workdir, url, isolation)
        await stack.enter_async_context(running(target))
        if "capacity" in chosen:
            print(f"  {name}: capacity", flush=True)
            result["capacity"] = await capacity(target, pool, sizes.capacity)
        if "fanout" in chosen:
            result["fanout"] = []
            for subscribers in sizes.fanout_subscribers:
                print(f"  {name}: fan-out, {subscribers} subscribers", flush=True)
                result["fanout"].append(
                    await workloads.fanout_saturated(
                        target, pool, subscribers, sizes.fanout_tokens, sizes.runs
                    )
                )
        if "paced" in chosen:
            result["paced"] = []
            for rate in sizes.paced_rates:
                print(f"  {name}: paced, {rate:g} tokens/s", flush=True)
                result["paced"].append(
                    await workloads.fanout_paced(
                        target,
                        pool,
                        sizes.paced_sessions,
                        sizes.paced_subscribers,
                        rate,
                        sizes.paced_seconds,
                        sizes.runs,
                    )
                )
        if "connections" in chosen:
            print(f"  {name}: connections", flush=True)
            result["connections"] = await workloads.connections(
                target,
                pool,
                sizes.connections,
                sizes.connections_per_room,
                sizes.connections_hold_s,
            )
    return result


async def run_admission(
    sizes: Sizes,
    pool: ClientPool,
    workdir: Path,
    databases: tuple[str, ...] = ("sqlite", "postgresql"),
    isolation: Isolation | None = None,
) -> dict[str, Any]:
    """Prompt admission against Parley on each database (PostgreSQL: a scratch one)."""
    result: dict[str, Any] = {}
    for database in databases:
        print(f"  parley: admission on {database}", flush=True)
        async with contextlib.AsyncExitStack() as stack:
            url = None
            if database == "postgresql":
                url = await stack.enter_async_context(postgres_database())
            target = make_target(PARLEY, workdir, url, isolation)
            assert isinstance(target, ParleyTarget)
            await stack.enter_async_context(running(target))
            result[database] = await workloads.admission(
                target,
                pool,
                sizes.admission_sessions,
                sizes.admission_prompts_each,
                sizes.admission_open_rate,
                sizes.admission_open_count,
                sizes.runs,
            )
    return result


def run_context_build(quick: bool) -> dict[str, Any]:
    """The context-build benchmark (``bench/context_build.py``): its corpus, smaller when quick."""
    from bench import context_build

    return context_build.run(messages=200 if quick else 2000, repeat=1 if quick else 5)


async def run(
    sizes: Sizes,
    servers: list[str],
    chosen: set[str],
    quick: bool,
    out_dir: Path,
    isolation: Isolation | None = None,
) -> dict[str, Any]:
    """Every chosen workload against every chosen server (``isolation``: each server on a
    core of its own, and this process and its client workers on the others)."""
    if isolation is not None:
        isolation.pin_this_process()  # before the client workers start: they inherit it
    results: dict[str, Any] = {
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "mode": "quick" if quick else "full",
        "sizes": dataclasses.asdict(sizes),
        "servers": {},
        "not_run": {},
    }
    if isolation is not None:
        results["isolation"] = isolation.describe()
    peers = [s for s in servers if s != PARLEY]
    if peers and chosen & SERVER_WORKLOADS:
        try:
            await asyncio.to_thread(setup_peers)
        except PeerSetupError as exc:
            for peer in peers:
                results["not_run"][peer] = str(exc)
            servers = [s for s in servers if s == PARLEY]
    workdir = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    pool = ClientPool(sizes.shards)
    try:
        for name in servers:
            if not chosen & SERVER_WORKLOADS:
                break
            print(f"{name}", flush=True)
            results["servers"][name] = await run_server(
                name, sizes, chosen, pool, workdir, isolation
            )
        if "admission" in chosen and PARLEY in servers:
            results["admission"] = await run_admission(sizes, pool, workdir, isolation=isolation)
    except BaseException:
        print(f"the servers' logs are kept in {workdir}", flush=True)
        raise
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    finally:
        await pool.close()
    if "context" in chosen:
        try:
            results["context_build"] = await asyncio.to_thread(run_context_build, quick)
        except Exception as exc:  # its failure is reported, the other results kept
            results["not_run"]["context_build"] = f"failed: {type(exc).__name__}: {exc}"
    results["finished_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return results


def write(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = results["started_at"][:10]
    suffix = "" if results["mode"] == "full" else "-quick"
    json_path = out_dir / f"{stamp}{suffix}.json"
    md_path = out_dir / f"{stamp}{suffix}.md"
    json_path.write_text(json.dumps(results, indent=1, allow_nan=True) + "\n")
    md_path.write_text(markdown(results))
    return json_path, md_path


def raise_open_files(connections: int) -> None:
    """Let the server (a child, which inherits the limit) hold ``connections`` sockets and
    its files: the soft limit on open files is raised as far as the hard one allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 1024
    if soft != resource.RLIM_INFINITY and soft < wanted:
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument("--runs", type=int, help="repetitions of each measurement")
    parser.add_argument(
        "--servers", default=",".join((PARLEY, *PEERS)), help="comma-separated subset"
    )
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--connections", type=int, help="idle sockets held (connections)")
    parser.add_argument(
        "--parley-database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="Parley's database for fan-out and connections (admission runs on both)",
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="each server on a CPU of its own, the clients on the others (bench/isolation.py)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    sizes.parley_database = args.parley_database
    if args.runs:
        sizes.runs = args.runs
    if args.connections:
        sizes.connections = args.connections
    raise_open_files(max(sizes.connections, sizes.capacity.ceiling * sizes.capacity.subscribers))
    servers = [s for s in args.servers.split(",") if s]
    unknown = set(servers) - {PARLEY, *PEERS}
    chosen = {w for w in args.workloads.split(",") if w}
    if unknown or chosen - set(WORKLOADS):
        parser.error(f"unknown: {sorted(unknown | (chosen - set(WORKLOADS)))}")
    try:
        isolation = split() if args.isolate else None
    except IsolationError as exc:
        parser.error(str(exc))
    results = asyncio.run(run(sizes, servers, chosen, args.quick, args.out, isolation))
    json_path, md_path = write(results, args.out)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return results


if __name__ == "__main__":
    main()
