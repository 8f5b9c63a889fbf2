"""Event streams resumed mid-reply (issue #18): many SSE subscribers, each cut once.

Starts ``parley serve`` (SQLite, the offline model at ``--token-delay-ms`` a word), opens
``--subscribers`` event streams on one session, sends one prompt, and cuts each stream
once after its ``1 + i % 3``-th text delta (a reader so slow that the whole reply came
first is cut after its end); each reconnects with the id of the last event it read
(``Last-Event-ID``) and reads on until the reply ends. Checks that every
subscriber's text is the stored reply exactly (no gap, no duplicate) and that it read each
stored event once, and reports how long it took.

    python -m bench.sse_resume [--subscribers 200] [--token-delay-ms 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

ADMIN_KEY = "bench-admin-key"
SECRET_KEY = "bench-secret-key-0123456789abcdef0123"
REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120.0


@dataclass
class Subscriber:
    index: int
    events: list[ServerSentEvent] = field(default_factory=list)
    cut_at: str | None = None  # the id it resumed from
    ended_before_cut: bool = False
    resume_ms: float | None = None  # reconnect until its first event


def _data(event: ServerSentEvent) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(event.data)
    return parsed


def _ends_reply(event: ServerSentEvent) -> bool:
    return event.event in ("reply_completed", "run_failed") and bool(
        _data(event)["data"]["reply_id"]
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _read(
    http: httpx.AsyncClient,
    path: str,
    headers: dict[str, str],
    sub: Subscriber,
    cut: int | None,
    *,
    until_queue: bool = False,
) -> str | None:
    """Read one stream into ``sub`` until the reply ends (None) or, with ``cut``, until
    its ``cut``-th delta (returns the id to resume from); ``until_queue``: until the first
    ``queue`` event (a stream resumed after the end gets that and nothing stored)."""
    deltas = 0
    started = time.perf_counter()
    async with aconnect_sse(http, "GET", path, headers=headers) as source:
        source.response.raise_for_status()
        async for event in source.aiter_sse():
            if not event.data:
                continue  # the reconnection delay
            if sub.resume_ms is None and cut is None:
                sub.resume_ms = (time.perf_counter() - started) * 1000
            if until_queue and event.event == "queue":
                return None
            sub.events.append(event)
            if _ends_reply(event):
                return None
            if event.event == "reply_delta":
                deltas += 1
                if deltas == cut:
                    return event.id
    raise RuntimeError(f"subscriber {sub.index}: the stream ended before the reply")


def spawn_server(data_dir: Path, port: int, subscribers: int, token_delay_ms: float) -> Server:
    """``parley serve`` on ``port`` (SQLite in ``data_dir``)."""
    env = {
        **os.environ,
        "PARLEY_DATABASE_URL": f"sqlite+aiosqlite:///{data_dir / 'bench.db'}",
        "PARLEY_DATA_DIR": str(data_dir),
        "PARLEY_ADMIN_KEY": ADMIN_KEY,
        "PARLEY_SECRET_KEY": SECRET_KEY,
        "PARLEY_LOG_LEVEL": "warning",
        "PARLEY_OFFLINE_TOKEN_DELAY_MS": str(token_delay_ms),
        # Every subscriber reads as the one member.
        "PARLEY_MAX_STREAMS_PER_USER": str(subscribers * 2),
    }
    log = open(data_dir / "server.log", "ab")  # noqa: SIM115 -- closed by ``stop``
    process = subprocess.Popen(
        [sys.executable, "-m", "parley.server.cli", "serve", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return Server(process, log, f"http://127.0.0.1:{port}")


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    base_url: str

    def cpu_s(self) -> float:
        """The server's CPU time so far (user and system; 0 where /proc is absent)."""
        stat = Path(f"/proc/{self.process.pid}/stat")
        if not stat.exists():
            return 0.0
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()


async def measure(server: Server, subscribers: int, token_delay_ms: float) -> dict[str, Any]:
    """Run the workload against ``server``; the report (see the module's docstring)."""
    limits = httpx.Limits(max_connections=subscribers * 2 + 10)
    async with httpx.AsyncClient(
        base_url=server.base_url, timeout=TIMEOUT_S, limits=limits
    ) as http:
        await _started(http, server.process)
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        made = await http.post("/api/v1/sessions", json={"title": "sse"}, headers=admin)
        sid = made.json()["id"]
        put = await http.put(
            f"/api/v1/sessions/{sid}/members/alice", json={"role": "editor"}, headers=admin
        )
        put.raise_for_status()
        issued = await http.post(
            f"/api/v1/sessions/{sid}/tokens", json={"user_id": "alice"}, headers=admin
        )
        token = issued.json()["token"]
        path = f"/api/v1/sessions/{sid}/events"
        subs = [Subscriber(i) for i in range(subscribers)]
        # Every stream starts from the session's last event before the prompt.
        head = (await http.get(path, headers=admin, params={"limit": 500})).json()["events"]
        first_id = str(head[-1]["seq"]) if head else "0"
        cpu_before, client_before = server.cpu_s(), time.process_time()
        async with asyncio.timeout(TIMEOUT_S):
            started = time.perf_counter()
            sent = await http.post(
                f"/api/v1/sessions/{sid}/prompts",
                json={"text": "tell every subscriber the same story"},
                headers={"Authorization": f"Bearer {token}"},
            )
            sent.raise_for_status()
            await asyncio.gather(*(_one(http, path, token, sub, first_id) for sub in subs))
            elapsed_s = time.perf_counter() - started
        cpu_s = server.cpu_s() - cpu_before
        client_cpu_s = time.process_time() - client_before
        transcript = await http.get(f"/api/v1/sessions/{sid}/transcript", headers=admin)
        report = _report(subs, transcript.json()["messages"], elapsed_s, token_delay_ms)
        # The client (one process, every stream) shares the machine: when its CPU time is
        # near the elapsed time, the latencies are the client's more than the server's.
        cpus = {"server_cpu_s": round(cpu_s, 3), "client_cpu_s": round(client_cpu_s, 3)}
        return {**report, **cpus}


async def _one(
    http: httpx.AsyncClient, path: str, token: str, sub: Subscriber, first_id: str
) -> None:
    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": first_id}
    resume_from = await _read(http, path, headers, sub, cut=1 + sub.index % 3)
    if resume_from is None:  # a slow reader may get the whole reply in its first deltas
        sub.ended_before_cut = True
        resume_from = sub.events[-1].id
    sub.cut_at = resume_from
    resumed = {**headers, "Last-Event-ID": resume_from}
    await _read(http, path, resumed, sub, cut=None, until_queue=sub.ended_before_cut)


async def _started(http: httpx.AsyncClient, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the server exited at start")
        try:
            if (await http.get("/healthz")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("the server did not start")


def _report(
    subs: list[Subscriber], messages: list[dict[str, Any]], elapsed_s: float, delay_ms: float
) -> dict[str, Any]:
    reply = next(m for m in messages if m["kind"] == "reply")
    whole = 0
    problems: list[str] = []
    for sub in subs:
        text = "".join(
            _data(e)["text"]
            for e in sub.events
            if e.event == "reply_delta" and _data(e)["reply_id"] == reply["id"]
        )
        seqs = [_data(e)["seq"] for e in sub.events if e.event not in ("reply_delta", "queue")]
        contiguous = seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else False
        if text == reply["content"] and contiguous:
            whole += 1
        else:
            problems.append(f"subscriber {sub.index}: text equal {text == reply['content']}")
    resumed = [s.resume_ms for s in subs if s.cut_at is not None and s.resume_ms is not None]
    return {
        "subscribers": len(subs),
        "cut_mid_reply": sum(1 for s in subs if not s.ended_before_cut),
        "ended_before_cut": sum(1 for s in subs if s.ended_before_cut),
        "whole_text_no_gap_no_duplicate": whole,
        "reply_chars": len(reply["content"]),
        "token_delay_ms": delay_ms,
        "elapsed_s": round(elapsed_s, 3),
        "resume_first_event_ms_p50": round(statistics.median(resumed), 1) if resumed else None,
        "resume_first_event_ms_max": round(max(resumed), 1) if resumed else None,
        "problems": problems[:10],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--token-delay-ms", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="parley-sse-bench-") as tmp:
        server = spawn_server(Path(tmp), free_port(), args.subscribers, args.token_delay_ms)
        try:
            result = asyncio.run(measure(server, args.subscribers, args.token_delay_ms))
        finally:
            server.stop()
    print(json.dumps(result, indent=2))
    if result["whole_text_no_gap_no_duplicate"] != result["subscribers"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
