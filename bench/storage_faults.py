"""Storage faults seen from outside: ``parley serve`` in a subprocess, real clients.

``sqlite-lock``: another process holds SQLite's write lock (``BEGIN IMMEDIATE``) for
``--hold-s`` seconds while a client sends a prompt every second; a pinger asks
``/healthz`` every 10 ms and reports the longest gap between two answers (the event
loop's longest stall), with what the prompts sent during the hold were answered.

``pg-outage``: the server's PostgreSQL database refuses connections for ``--hold-s``
seconds (its sessions terminated, ``ALLOW_CONNECTIONS false``; the shared server keeps
running); Python clients that reconnect as y-websocket 1.x/2.x does (100 ms, doubling to
2.5 s after each attempt that did not open) count their attempts, and so do stock
y-websocket clients (``tests/js/stock_client.mjs``: its closes). Reports connection attempts per
second during the outage, and what a command sent during it was answered.

    python -m bench.storage_faults sqlite-lock
    python -m bench.storage_faults pg-outage
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import websockets

from parley.server.store.db import migrate
from tests.conftest import POSTGRES_URL, ServerProcess, free_port, postgres_database, sqlite_url
from tests.stock_client import StockYjsClient
from tests.yclient import YClient

HOLDER = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("COMMIT")
"""


async def _session(http: httpx.AsyncClient, user: str) -> tuple[str, str]:
    sid = str((await http.post("/api/v1/sessions", json={})).json()["id"])
    await http.put(f"/api/v1/sessions/{sid}/members/{user}", json={"role": "editor"})
    token = (await http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": user})).json()
    return sid, str(token["token"])


async def ping(base_url: str, seconds: float, every_s: float = 0.01) -> dict[str, float]:
    """``/healthz`` every ``every_s`` for ``seconds``: the longest time between two
    answers, and how long after the start it ended. Run in a process of its own
    (``ping`` scenario), so the clients' work does not show as the server's stall."""
    longest, at = 0.0, 0.0
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        await http.get("/healthz")  # connected: measure from here
        print("ready", flush=True)
        started = last = time.monotonic()
        while last - started < seconds:
            await http.get("/healthz")
            now = time.monotonic()
            if now - last > longest:
                longest, at = now - last, now - started
            last = now
            await asyncio.sleep(every_s)
    return {"max_gap_ms": round(longest * 1000, 1), "at_s": round(at, 2)}


async def _pinger(base_url: str, seconds: float) -> asyncio.subprocess.Process:
    """A pinger process, once it has had its first answer."""
    pinger = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.storage_faults",
        "ping",
        "--url",
        base_url,
        "--hold-s",
        str(seconds),
        stdout=subprocess.PIPE,
    )
    assert pinger.stdout is not None
    await pinger.stdout.readline()
    return pinger


async def _gap(pinger: asyncio.subprocess.Process) -> dict[str, float]:
    out, _ = await pinger.communicate()
    result: dict[str, float] = json.loads(out)
    return result


async def sqlite_lock(hold_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        url = sqlite_url(Path(tmp))
        node = ServerProcess(url, Path(tmp) / "d", free_port())
        await node.start()
        try:
            async with httpx.AsyncClient(
                base_url=node.base_url,
                headers={"Authorization": "Bearer test-admin-key"},
                timeout=60,
            ) as http:
                sid, token = await _session(http, "alice")
                client = await YClient.connect(node.ws_url, sid, token)
                await asyncio.wait_for(client.synced.wait(), 10)
                # The same load without the lock held: the machine's own noise.
                pinger = await _pinger(node.base_url, hold_s)
                await _prompt_every_second(client, hold_s, "idle")
                before = await _gap(pinger)
                pinger = await _pinger(node.base_url, hold_s)
                holder = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    HOLDER,
                    url.split("///", 1)[1],
                    str(hold_s),
                    stdout=subprocess.PIPE,
                )
                assert holder.stdout is not None
                await holder.stdout.readline()
                answers = await _prompt_every_second(client, hold_s, "held")
                await holder.wait()
                during = await _gap(pinger)
                after = await client.command({"type": "prompt", "id": "after", "text": "hi"})
                await client.close()
                return {
                    "hold_s": hold_s,
                    "healthz_max_gap_unlocked": before,
                    "healthz_max_gap_during_hold": during,
                    "answers_during_hold": answers,
                    "answer_after": after.get("code", after["type"]),
                }
        finally:
            node.stop()
            _keep_log(node)


def _keep_log(node: ServerProcess) -> None:
    """Copy the server's log to ``$PARLEY_BENCH_SERVER_LOG`` when set (it lives in a
    temporary directory)."""
    target = os.environ.get("PARLEY_BENCH_SERVER_LOG")
    if target and node.log.exists():
        Path(target).write_bytes(node.log.read_bytes())


async def _prompt_every_second(client: YClient, seconds: float, tag: str) -> list[str]:
    """Send a prompt every second for ``seconds``; what each was answered."""
    started = time.monotonic()
    answers: list[str] = []
    while time.monotonic() - started < seconds:
        command = {"type": "prompt", "id": f"{tag}{len(answers)}", "text": "hi"}
        reply = await client.command(command, timeout=60)
        answers.append(str(reply.get("code", reply["type"])))
        await asyncio.sleep(1)
    return answers


class StockLikeClient:
    """Reconnects like y-websocket 1.x/2.x: after a close, waits min(2**failures * 100 ms, 2.5 s),
    where ``failures`` counts attempts in a row that never opened."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.attempts: list[float] = []
        self.closes: list[tuple[int | None, str]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        failures = 0
        while True:
            self.attempts.append(time.monotonic())
            try:
                async with websockets.connect(self.url, open_timeout=10) as ws:
                    failures = 0
                    with contextlib.suppress(websockets.ConnectionClosed):
                        async for _ in ws:
                            pass
                    self.closes.append((ws.close_code, ws.close_reason or ""))
            except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:
                failures += 1
                self.closes.append((None, type(exc).__name__))
            await asyncio.sleep(min(2**failures * 0.1, 2.5))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _allow(name: str, allowed: bool) -> None:
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                name,
            )
    finally:
        await admin.close()


async def pg_outage(hold_s: float, clients: int, stock_clients: int) -> dict[str, Any]:
    async with postgres_database() as url:
        name = url.rsplit("/", 1)[1]
        await asyncio.to_thread(migrate, url)
        with tempfile.TemporaryDirectory() as tmp:
            node = ServerProcess(
                url, Path(tmp) / "d", free_port(), PARLEY_OFFLINE_TOKEN_DELAY_MS="100"
            )
            await node.start()
            try:
                async with httpx.AsyncClient(
                    base_url=node.base_url,
                    headers={"Authorization": "Bearer test-admin-key"},
                    timeout=60,
                ) as http:
                    sid, token = await _session(http, "alice")
                    url_ws = f"{node.ws_url}/ws/sessions/{sid}?token={token}"
                    speaker = await YClient.connect(node.ws_url, sid, token)
                    await asyncio.wait_for(speaker.synced.wait(), 10)
                    stock = [StockLikeClient(url_ws) for _ in range(clients)]
                    for client in stock:
                        client.start()
                    real = [
                        await StockYjsClient.start(f"{node.ws_url}/ws/sessions", sid, token)
                        for _ in range(stock_clients)
                    ]
                    for client in real:
                        await client.wait_event(
                            lambda e: e.get("event") == "sync" and bool(e.get("synced")), 30
                        )
                    # A reply streaming when the database goes: its writes fail too.
                    await speaker.command({"type": "prompt", "id": "long", "text": "hi"})
                    await speaker.wait_until(
                        lambda c: any(e["kind"] == "reply" and e["content"] for e in c.entries())
                    )
                    await _allow(name, False)
                    started = time.monotonic()
                    real_from = [len(c.history) for c in real]
                    try:
                        try:
                            reply = await speaker.command(
                                {"type": "prompt", "id": "during", "text": "hi"}, timeout=5
                            )
                            during = str(reply.get("code", reply["type"]))
                        except (TimeoutError, websockets.ConnectionClosed):
                            during = f"no reply (socket closed: {speaker.ws.close_code})"
                        await asyncio.sleep(max(0.0, hold_s - (time.monotonic() - started)))
                        ready = (await http.get("/readyz")).status_code
                    finally:
                        await _allow(name, True)
                    ended = time.monotonic()
                    real_closes = sum(
                        sum(1 for e in c.history[i:] if e.get("event") == "connection-close")
                        for c, i in zip(real, real_from, strict=True)
                    )
                    await asyncio.sleep(3)
                    for stock_client in real:
                        await stock_client.close()
                    for client in stock:
                        await client.stop()
                    attempts = sum(
                        sum(1 for t in c.attempts if started <= t < ended) for c in stock
                    )
                    closes: dict[str, int] = {}
                    for client in stock:
                        for code, reason in client.closes:
                            key = f"{code} {reason}"[:80]
                            closes[key] = closes.get(key, 0) + 1
                    await speaker.close()
                    return {
                        "hold_s": hold_s,
                        "clients": clients,
                        "reconnects_per_s_per_client": round(
                            attempts / (ended - started) / clients, 2
                        ),
                        "stock_y_websocket_reconnects_per_s_per_client": round(
                            real_closes / (ended - started) / max(1, stock_clients), 2
                        ),
                        "command_during_outage": during,
                        "readyz_during_outage": ready,
                        "closes": closes,
                    }
            finally:
                node.stop()
                _keep_log(node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=["sqlite-lock", "pg-outage", "ping"])
    parser.add_argument("--url", help="ping: the server's base URL")
    parser.add_argument("--hold-s", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=5, help="pg-outage: Python clients")
    parser.add_argument(
        "--stock-clients", type=int, default=1, help="pg-outage: y-websocket clients (node)"
    )
    args = parser.parse_args()
    if args.scenario == "ping":
        result: dict[str, Any] = asyncio.run(ping(args.url, args.hold_s))
    elif args.scenario == "sqlite-lock":
        result = asyncio.run(sqlite_lock(args.hold_s))
    else:
        result = asyncio.run(pg_outage(args.hold_s, args.clients, args.stock_clients))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
