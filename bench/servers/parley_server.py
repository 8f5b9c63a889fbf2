"""Parley as the benchmark runs it: the real app, with a bench model provider.

The provider answers a prompt ``bench tokens=N rate=R id=X`` with exactly N fixed-width
tokens (``0000042 ``), R per second (0: as fast as the event loop lets it yield, like the
offline provider without delay), and records when each call started and when it yielded
each token (``time.monotonic()``, which every process on the machine shares). The
benchmark reads those records at ``GET /bench/records``; every other path is Parley's.

    python -m bench.servers.parley_server --port 8800 --database-url URL --data-dir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from parley.server.app import create_app
from parley.server.cli import ParleyServer, freeze_startup_heap, uvicorn_config
from parley.server.logs import configure_logging
from parley.server.settings import Settings
from parley.server.store.db import migrate
from parley.session.model import Finish, ModelEvent, ModelRequest, TextDelta, Usage

TOKEN_WIDTH = 8
_SPEC = re.compile(r"bench tokens=(\d+) rate=([\d.]+) id=(\S+)")
MAX_TOKENS = 100_000


def token_text(index: int) -> str:
    return f"{index:0{TOKEN_WIDTH - 1}d} "


class Recorder:
    """Per bench call: when it started, how many tokens it owes, when it yielded each."""

    def __init__(self) -> None:
        self.calls: dict[str, float] = {}
        self.tokens: dict[str, int] = {}
        self.yields: dict[str, list[float]] = {}

    def drain(self) -> dict[str, Any]:
        """The records of the calls that have yielded every token (removed here)."""
        finished = [c for c, ys in self.yields.items() if len(ys) >= self.tokens[c]]
        records = {c: {"started": self.calls[c], "yields": self.yields[c]} for c in finished}
        for call_id in finished:
            del self.calls[call_id], self.tokens[call_id], self.yields[call_id]
        return records


class BenchProvider:
    """Yields the tokens a ``bench …`` prompt asks for; any other prompt gets one token."""

    name = "parley-bench"

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        started = time.monotonic()
        prompt = request.messages[request.answering[-1]].content if request.answering else ""
        match = _SPEC.search(prompt)
        tokens, rate, call_id = 1, 0.0, ""
        if match is not None:
            tokens = min(int(match.group(1)), MAX_TOKENS)
            rate, call_id = float(match.group(2)), match.group(3)
            self.recorder.calls[call_id] = started
            self.recorder.tokens[call_id] = tokens
        yields: list[float] = []
        if call_id:
            self.recorder.yields[call_id] = yields
        for index in range(tokens):
            if rate > 0:
                delay = started + index / rate - time.monotonic()
                await asyncio.sleep(max(delay, 0.0))
            else:
                await asyncio.sleep(0)
            yields.append(time.monotonic())
            yield TextDelta(token_text(index))
        yield Usage(input_tokens=1, output_tokens=tokens)
        yield Finish("stop")


def bench_routes(recorder: Recorder) -> list[Route]:
    """``GET /bench/records`` (finished calls' timings, then forgotten) and ``/bench/heap``:
    routes of Parley's own app, not a wrapper around it, whose coroutine would stay alive
    with each socket and count in its memory (``server.ws.socket_routes``)."""

    async def records(_: Request) -> Response:
        return JSONResponse(recorder.drain())

    async def heap(request: Request) -> Response:
        return JSONResponse(dump_heap(request.scope))

    return [Route("/bench/records", records), Route("/bench/heap", heap, methods=["GET", "POST"])]


def dump_heap(scope: Scope) -> dict[str, Any]:
    """Collect garbage, then write a tracemalloc snapshot to the ``path`` query parameter."""
    if not tracemalloc.is_tracing():
        return {"error": "not tracing: set PARLEY_BENCH_TRACEMALLOC"}
    path = parse_qs(scope["query_string"].decode())["path"][0]
    gc.collect()
    tracemalloc.take_snapshot().dump(path)
    return {"path": path, "traced_bytes": tracemalloc.get_traced_memory()[0]}


def bench_settings(**overrides: Any) -> Settings:
    """Parley's settings with the per-member budgets opened up: the benchmark's drivers
    send far more commands per socket, and open far more sockets per member, than a person
    would, which is not what it measures."""
    values: dict[str, Any] = {
        "commands_per_second": 100_000.0,
        "commands_burst": 100_000,
        "user_commands_per_second": 100_000.0,
        # Every subscriber of a room is one member's socket: hundreds of opens and syncs
        # of one member, past the budgets a person's clients get.
        "socket_opens_per_minute": 1_000_000.0,
        "socket_opens_burst": 1_000_000,
        "sync_bytes_per_s": 1024**4,
        "sync_burst_bytes": 1024**4,
        "inbound_bytes_per_s": 1024**4,
        "inbound_burst_bytes": 1024**4,
        "max_pending_per_user": 1000,
        "max_pending_per_session": 1000,
        "ws_idle_timeout_s": 600.0,
        "log_level": "warning",
    }
    values.update(overrides)
    return Settings(**values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    frames = os.environ.get("PARLEY_BENCH_TRACEMALLOC")
    if frames:
        tracemalloc.start(int(frames))
    settings = bench_settings(
        port=args.port, database_url=args.database_url, data_dir=args.data_dir
    )
    configure_logging(settings.log_level, settings.log_format)
    migrate(settings.database_url)
    recorder = Recorder()
    app = create_app(settings, provider=BenchProvider(recorder))
    app.router.routes[:0] = bench_routes(recorder)
    config = uvicorn_config(app, settings)
    profile = os.environ.get("PARLEY_BENCH_PROFILE")
    server = ParleyServer(config, app) if not profile else ProfiledServer(config, app, profile)
    freeze_startup_heap()  # as `parley serve` does
    server.run()


class ProfiledServer(ParleyServer):
    """``PARLEY_BENCH_PROFILE=DIR``: the whole serving time under pyinstrument, its text
    report written to ``DIR/parley-<port>.txt`` at shutdown (before uvicorn re-raises the
    signal that stopped it)."""

    def __init__(self, config: Any, app: Any, directory: str) -> None:
        from pyinstrument import Profiler

        super().__init__(config, app)
        self.report = Path(directory) / f"parley-{config.port}.txt"
        self.profiler = Profiler(interval=0.001, async_mode="disabled")
        self.profiler.start()

    async def shutdown(self, sockets: Any = None) -> None:
        self.profiler.stop()
        self.report.write_text(self.profiler.output_text(show_all=False))
        await super().shutdown(sockets)


if __name__ == "__main__":
    main()
