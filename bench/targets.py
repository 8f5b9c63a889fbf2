"""The servers under test, each behind one small adapter.

An adapter starts its server in a subprocess, makes rooms with subscriber URLs, and
starts the server-side writer of a room through that server's own public API: for Parley
a member's ``prompt`` command answered by a model run; for the peers their document API
(``getYDoc`` / ``WebsocketServer.get_room``) driven by a bench-only HTTP route.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.isolation import Isolation
from bench.wsclient import WSClient, connect

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
PEERS_DIR = BENCH_DIR / "peers"
PEERS_VENV = BENCH_DIR / ".venv-peers"
ADMIN_KEY = "bench-admin-key"
SECRET_KEY = "bench-secret-key-0123456789abcdef0123"
START_TIMEOUT_S = 60.0


class Driver:
    """A member's socket that sends prompts and reads their acks (it receives the
    document's updates too, like any socket of the session, and drops them)."""

    def __init__(self) -> None:
        self.socket: WSClient | None = None
        self.replies: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def on_message(self, message: bytes | str) -> None:
        if isinstance(message, str):
            reply = json.loads(message)
            future = self.replies.pop(reply.get("id"), None)
            if future is not None and not future.done():
                future.set_result(reply)

    async def command(self, payload: dict[str, Any], timeout_s: float = 30) -> dict[str, Any]:
        assert self.socket is not None
        future = asyncio.get_running_loop().create_future()
        self.replies[payload["id"]] = future
        self.socket.send(json.dumps(payload))
        return await asyncio.wait_for(future, timeout_s)


@dataclass
class Room:
    name: str
    subscriber_urls: list[str]
    driver: Driver | None = None  # Parley: the member socket that prompts


@dataclass
class Target:
    """A server process under test. Subclasses make rooms and writers."""

    name: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    http: httpx.AsyncClient | None = None
    layout: str = "text"
    isolation: Isolation | None = None  # ``--isolate``: the server on a core of its own
    _log: Any = field(default=None, repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def cwd(self) -> Path:
        return REPO_ROOT

    def _spawn(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command(),
            env=self.env(),
            cwd=self.cwd(),
            stdout=self._log,
            stderr=self._log,
            preexec_fn=None if self.isolation is None else self.isolation.pin_server(),
        )

    async def start(self) -> None:
        self._spawn()
        assert self.process is not None
        self.http = httpx.AsyncClient(base_url=self.base, timeout=120)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.workdir / self.name}.log")
            with contextlib.suppress(httpx.HTTPError):
                if (await self.http.get("/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start within {START_TIMEOUT_S:g} s")

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, 60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait, 10)
        if self._log is not None:
            self._log.close()

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (user and system)."""
        assert self.process is not None
        return process_cpu_seconds(self.process.pid)

    def switches(self) -> tuple[int, int]:
        """The server's main thread's context switches so far: (voluntary, involuntary)."""
        assert self.process is not None
        return thread_switches(self.process.pid)

    def rss_bytes(self) -> int:
        assert self.process is not None
        return resident_bytes(self.process.pid)

    async def make_rooms(
        self, rooms: int, subscribers: int, *, driver: bool = True, role: str = "viewer"
    ) -> list[Room]:
        assert self.http is not None
        prefix = uuid.uuid4().hex[:8]
        ws = self.base.replace("http://", "ws://")
        made = []
        for i in range(rooms):
            name = f"r{prefix}{i}"
            (await self.http.post("/bench/room", params={"room": name})).raise_for_status()
            made.append(Room(name, [f"{ws}/{name}"] * subscribers))
        return made

    def write(self, room: Room, tokens: int, rate: float) -> Awaitable[list[float]]:
        """Start the room's writer; the awaitable gives when each token was yielded (awaited
        once the subscribers hold them all)."""

        async def run() -> list[float]:
            assert self.http is not None
            response = await self.http.post(
                "/bench/write", params={"room": room.name, "tokens": tokens, "rate": rate}
            )
            response.raise_for_status()
            yields: list[float] = response.json()["yields"]
            return yields

        return asyncio.ensure_future(run())

    async def close_rooms(self, rooms: list[Room]) -> None:
        return None


class YWebsocketTarget(Target):
    def command(self) -> list[str]:
        return ["node", str(PEERS_DIR / "yws_server.mjs"), str(self.port)]

    def cwd(self) -> Path:
        return PEERS_DIR


class PycrdtWebsocketTarget(Target):
    def command(self) -> list[str]:
        script = BENCH_DIR / "servers" / "pycrdt_server.py"
        return [str(PEERS_VENV / "bin" / "python"), str(script), "--port", str(self.port)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # nothing of Parley's environment in the peer's
        return env


def resident_bytes(pid: int) -> int:
    """A process's resident set, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def thread_switches(pid: int) -> tuple[int, int]:
    """A process's main thread's context switches, from ``/proc/<pid>/status``: voluntary
    (it waited: for the event loop, that is an idle loop sleeping until something is due)
    and involuntary (it could have run on, and another process took the core)."""
    counts = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
            counts[name] = int(value)
    return counts["voluntary_ctxt_switches"], counts["nonvoluntary_ctxt_switches"]


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class ParleyTarget(Target):
    database_url: str = ""
    layout: str = "parley"
    finished: dict[str, Any] = field(default_factory=dict)
    _fetching: asyncio.Future[None] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.servers.parley_server",
            "--port",
            str(self.port),
            "--database-url",
            self.database_url,
            "--data-dir",
            str(self.workdir / "parley-data"),
        ]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(REPO_ROOT),
            PARLEY_ADMIN_KEY=ADMIN_KEY,
            PARLEY_SECRET_KEY=SECRET_KEY,
            # Every subscriber of a room joins as one member ("sub"), as the peers' clients
            # join with no identity: the per-member socket cap would refuse the 17th.
            PARLEY_MAX_CONNECTIONS_PER_USER="1000000",
        )
        return env

    async def start(self) -> None:
        await super().start()
        assert self.http is not None
        self.http.headers["Authorization"] = f"Bearer {ADMIN_KEY}"

    async def _session(
        self, driver: bool, role: str, token_ttl_s: int
    ) -> tuple[str, str, str | None]:
        assert self.http is not None
        created = await self.http.post("/api/v1/sessions", json={"title": "bench"})
        created.raise_for_status()
        sid = created.json()["id"]
        members = {"sub": role, **({"driver": "editor"} if driver else {})}
        tokens: dict[str, str] = {}
        for user, role in members.items():
            put = await self.http.put(f"/api/v1/sessions/{sid}/members/{user}", json={"role": role})
            put.raise_for_status()
            issued = await self.http.post(
                f"/api/v1/sessions/{sid}/tokens", json={"user_id": user, "ttl_seconds": token_ttl_s}
            )
            issued.raise_for_status()
            tokens[user] = issued.json()["token"]
        return sid, tokens["sub"], tokens.get("driver")

    async def make_rooms(
        self, rooms: int, subscribers: int, *, driver: bool = True, role: str = "viewer"
    ) -> list[Room]:
        ws = self.base.replace("http://", "ws://")
        limit = asyncio.Semaphore(8)

        async def one() -> Room:
            async with limit:
                sid, sub, drive = await self._session(driver, role, 6 * 3600)
            room = Room(sid, [f"{ws}/ws/sessions/{sid}?token={sub}"] * subscribers)
            if drive is not None:
                room.driver = Driver()
                room.driver.socket = await connect(
                    f"{ws}/ws/sessions/{sid}?token={drive}", room.driver.on_message
                )
            return room

        return list(await asyncio.gather(*(one() for _ in range(rooms))))

    def write(self, room: Room, tokens: int, rate: float) -> Awaitable[list[float]]:
        call_id = uuid.uuid4().hex
        text = f"bench tokens={tokens} rate={rate:g} id={call_id}"

        async def prompt() -> None:
            assert room.driver is not None
            reply = await room.driver.command({"type": "prompt", "id": call_id, "text": text})
            if reply.get("type") != "ack":
                raise RuntimeError(f"prompt refused: {reply}")

        return self._yields(asyncio.ensure_future(prompt()), call_id)

    async def _yields(self, acked: Awaitable[None], call_id: str) -> list[float]:
        """When each token of the call was yielded, asked of the server (it records them)
        once this is awaited: ``workloads._round`` awaits its writers after the subscribers
        hold every token, so the benchmark's own requests stay out of what it measures (a
        poll while the last tokens streamed cost the loop a request and a JSON body of
        every finished call's times, and delayed the runs' last tokens; the peers give
        their times in their write's answer)."""
        await acked
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            await self.records()
            if call_id in self.finished:
                yields: list[float] = self.finished.pop(call_id)["yields"]
                return yields
            await asyncio.sleep(0.1)
        raise TimeoutError(f"the bench call {call_id} did not finish")

    async def runs_finished(self) -> int:
        """Runs settled so far, from the server's own metrics (``parley_runs_total``)."""
        assert self.http is not None
        response = await self.http.get("/metrics")
        response.raise_for_status()
        counts = [
            float(line.split()[-1])
            for line in response.text.splitlines()
            if line.startswith("parley_runs_total{")
        ]
        return int(sum(counts))

    async def records(self) -> dict[str, Any]:
        """Add the finished bench calls (``bench.servers.parley_server.Recorder``) to
        ``finished``, where each caller takes its own: parallel writers share one request."""
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.ensure_future(self._fetch_records())
        await asyncio.shield(self._fetching)
        return self.finished

    async def _fetch_records(self) -> None:
        assert self.http is not None
        response = await self.http.get("/bench/records")
        response.raise_for_status()
        self.finished.update(response.json())

    async def close_rooms(self, rooms: list[Room]) -> None:
        for room in rooms:
            if room.driver is not None and room.driver.socket is not None:
                room.driver.socket.close()
