"""What the event webhook benchmarks share: a Parley server with webhook settings, a
loopback receiver that can answer slowly or be down, a paced load of member commands
with their ack latencies, and reads of the server's SQLite database.

``bench.webhook_load`` and ``bench.webhook_outage`` build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import socket
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.targets import ParleyTarget, Room

# Limits a bench driver would hit at once (one member sends every command of a session).
LOAD_ENV = {
    "PARLEY_COMMANDS_PER_SECOND": "100000",
    "PARLEY_COMMANDS_BURST": "100000",
    "PARLEY_USER_COMMANDS_PER_SECOND": "100000",
    "PARLEY_MAX_PENDING_PER_USER": "1000",
    "PARLEY_MAX_PENDING_PER_SESSION": "1000",
    "PARLEY_LOG_LEVEL": "warning",
    "PARLEY_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver listens on loopback
}
WEBHOOK_TYPES = ["member.added", "prompt.accepted", "reply.completed", "run.failed"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class HookTarget(ParleyTarget):
    """Parley (the bench server) with extra settings from the environment."""

    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**super().env(), **LOAD_ENV, **self.extra_env}

    @property
    def database_path(self) -> Path:
        return Path(self.database_url.removeprefix("sqlite+aiosqlite:///"))

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the server's SQLite database (read-only, beside the running server)."""
        with contextlib.closing(
            sqlite3.connect(f"file:{self.database_path}?mode=ro", uri=True, timeout=30)
        ) as db:
            return db.execute(sql, params).fetchall()

    async def subscribe(self, url: str, events: Sequence[str] = WEBHOOK_TYPES) -> dict[str, Any]:
        assert self.http is not None
        made = await self.http.post("/api/v1/webhooks", json={"url": url, "events": list(events)})
        made.raise_for_status()
        created: dict[str, Any] = made.json()
        return created


def hook_target(name: str, workdir: Path, **env: str) -> HookTarget:
    database = workdir / name / "parley.db"
    database.parent.mkdir(parents=True, exist_ok=True)
    return HookTarget(
        name,
        free_port(),
        workdir / name,
        database_url=f"sqlite+aiosqlite:///{database}",
        extra_env=env,
    )


@dataclass
class Arrival:
    at: float  # time.monotonic()
    message_id: str
    body: bytes
    payload: dict[str, Any] | None  # verified with ``standardwebhooks``; None: not checked


class Receiver:
    """A webhook endpoint on a fixed loopback port: answers 204 after ``delay_s``; can be
    taken down (nothing listens) and brought back on the same port."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        # Set: every request is verified on arrival (as a receiver must, within the
        # signature's time tolerance); a bad one is answered 400 and counted.
        self.verifier: Webhook | None = None
        self.bad_signatures = 0
        self.port = free_port()
        self.arrivals: list[Arrival] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        headers = dict(request.headers)
        payload = None
        if self.verifier is not None:
            try:
                payload = self.verifier.verify(body, headers)
            except WebhookVerificationError:
                self.bad_signatures += 1
                return Response(status_code=400)
        self.arrivals.append(Arrival(time.monotonic(), headers["webhook-id"], body, payload))
        return Response(status_code=204)

    async def up(self) -> None:
        app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        async with asyncio.timeout(10):
            while not self._server.started:
                if self._task.done():
                    self._task.result()
                await asyncio.sleep(0.01)

    async def down(self) -> None:
        """Stop listening: deliveries find the port closed until ``up``."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.force_exit = True  # do not wait for slow answers under way
            await self._task
            self._server = self._task = None


@contextlib.asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[Receiver]:
    await receiver.up()
    try:
        yield receiver
    finally:
        await receiver.down()


@dataclass
class Ack:
    sent: float  # time.monotonic()
    latency_s: float | None  # None: no ack (an error reply or none in time)
    kind: str  # prompt or message
    error: str | None = None


async def paced_load(
    rooms: Sequence[Room],
    commands_per_s: float,
    duration_s: float,
    prompt_share: float,
    *,
    tick_s: float = 0.01,
    ack_timeout_s: float = 60.0,
) -> list[Ack]:
    """Send ``commands_per_s`` commands, spread over ``rooms`` in turn, for ``duration_s``;
    every ``round(1 / prompt_share)``-th is a prompt (a model run), the rest messages.
    Returns each command's ack latency. Sends never wait for acks (an open loop), so a
    slow server shows as latency, not as a lower rate. The generator runs on the same
    cores as the server, so a command costs it a frame and a callback: no task or timer
    each (a command not answered ``ack_timeout_s`` after the last send counts as lost)."""
    every = max(1, round(1 / prompt_share)) if prompt_share > 0 else 0
    turn = itertools.cycle(rooms)
    acks: list[Ack] = []
    waiting: dict[str, tuple[float, str]] = {}  # command id: (sent, kind)

    all_answered = asyncio.Event()

    def answered(command_id: str, future: asyncio.Future[dict[str, Any]]) -> None:
        sent, kind = waiting.pop(command_id)
        if not waiting and sending_done:
            all_answered.set()
        reply = future.result()
        if reply.get("type") == "ack":
            acks.append(Ack(sent, time.monotonic() - sent, kind))
        else:
            acks.append(Ack(sent, None, kind, str(reply.get("error", reply))[:200]))

    sending_done = False
    loop = asyncio.get_running_loop()
    prefix = uuid.uuid4().hex[:12]
    started = time.monotonic()
    sent = 0
    while (now := time.monotonic()) - started < duration_s:
        due = int((now - started) * commands_per_s)
        for n in range(sent, due):
            driver = next(turn).driver
            assert driver is not None and driver.socket is not None
            kind = "prompt" if every and n % every == 0 else "message"
            command_id = f"{prefix}-{n}"
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            driver.replies[command_id] = future
            waiting[command_id] = (time.monotonic(), kind)
            future.add_done_callback(functools.partial(answered, command_id))
            driver.socket.send(json.dumps({"type": kind, "id": command_id, "text": f"load {n}"}))
        sent = max(sent, due)
        await asyncio.sleep(tick_s)
    sending_done = True
    if waiting:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_answered.wait(), ack_timeout_s)
    for sent_at, kind in waiting.values():
        acks.append(Ack(sent_at, None, kind, f"no ack in {ack_timeout_s:g} s"))
    for room in rooms:  # the lost ones' futures: nobody waits for them any more
        if room.driver is not None:
            room.driver.replies.clear()
    return acks


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, p99 in milliseconds (nearest rank)."""
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)

    return {"p50_ms": rank(0.50), "p95_ms": rank(0.95), "p99_ms": rank(0.99)}
