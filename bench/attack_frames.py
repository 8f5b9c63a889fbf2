"""Issue #15 breaks 1, 4 and 5 as measurements: what a hostile member's cheap frames cost
everyone else. Starts ``parley serve`` in a subprocess (SQLite, offline model) and runs:

- ``judge``: no server; what judging each frame of break 1 costs, in process.
- ``deletes``: after 20 prompts, a viewer sends three ~3.9 MB sync updates whose delete set
  repeats the server's own last deleted range; another member's command round trip is
  timed before and during the attack.
- ``awareness``: a viewer floods awareness at the socket's frame rate (8 clients of ~16 KB
  each per frame) for 6 s; 20 listeners count the bytes they receive, and one more listener
  reads at ~1 MB/s (is it dropped as a slow consumer?).
- ``sync``: four viewer sockets loop "send me everything" (sync step 1) against a ~3 MB
  document for 10 s (reconnecting when closed); another editor's ack round trip is timed.

    python -m bench.attack_frames [judge|deletes|awareness|sync ...]

The attackers run in a child process so their own parsing does not skew the timings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import websockets
from pycrdt import Doc, write_var_uint

from parley.session.errors import TooLarge
from parley.session.schema import QueuedItem, SessionDocument
from parley.session.yprotocol import (
    AwarenessState,
    SyncType,
    delete_set_of,
    encode_awareness,
    encode_awareness_update,
    encode_sync,
    is_noop_update,
    normalise_delete_set,
)
from tests.conftest import ADMIN_KEY, ServerProcess, free_port
from tests.yclient import YClient, all_replies_settled, repeated_deletion

FRAME_BYTES = 3_900_000
PROBE_EVERY_S = 0.05
SYNC_STEP1_EMPTY = encode_sync(SyncType.STEP1, b"\x00")

Stats = dict[str, Any]


class Server(ServerProcess):
    """``parley serve`` in a subprocess (the tests' own), with an admin HTTP client."""

    def __init__(self, workdir: Path) -> None:
        # Setup sends many commands; the attacks are not commands.
        fast = {"PARLEY_OFFLINE_TOKEN_DELAY_MS": "1", "PARLEY_COMMANDS_PER_SECOND": "1000"}
        fast |= {"PARLEY_COMMANDS_BURST": "1000", "PARLEY_USER_COMMANDS_PER_SECOND": "1000"}
        url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
        super().__init__(url, workdir / "data", free_port(), **fast)
        self.http = httpx.AsyncClient(
            base_url=self.base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60
        )

    async def session(self, members: dict[str, str]) -> str:
        sid = str((await self.http.post("/api/v1/sessions", json={"title": "b"})).json()["id"])
        for user, role in members.items():
            await self.http.put(f"/api/v1/sessions/{sid}/members/{user}", json={"role": role})
        return sid

    async def url(self, sid: str, user: str) -> str:
        reply = await self.http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": user})
        return f"{self.ws_url}/ws/sessions/{sid}?token={reply.json()['token']}"

    async def client(self, sid: str, user: str) -> YClient:
        url = await self.url(sid, user)
        client = await YClient.connect(self.ws_url, sid, url.rsplit("=", 1)[1])
        await client.synced.wait()
        return client


def summary(times: list[float]) -> Stats:
    if not times:
        return {"n": 0}
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "n": len(times),
        "median_ms": round(statistics.median(times) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


async def probe_while(client: YClient, running: Callable[[], bool], kind: str) -> list[float]:
    """Round trips of ``message`` commands (``kind``: a label) while ``running()``."""
    times: list[float] = []
    n = 0
    while running():
        n += 1
        started = time.perf_counter()
        try:
            reply = await client.command({"type": "message", "id": f"{kind}{n}", "text": "."}, 120)
        except TimeoutError:
            times.append(120.0)  # reported as a 120 s round trip: the loop is stalled
            break
        assert reply["type"] == "ack", reply
        times.append(time.perf_counter() - started)
        await asyncio.sleep(PROBE_EVERY_S)
    return times


async def baseline(client: YClient, seconds: float) -> list[float]:
    end = time.monotonic() + seconds
    return await probe_while(client, lambda: time.monotonic() < end, "base")


def in_child(attack: Callable[..., Awaitable[Stats]], *args: Any) -> tuple[Any, Any]:
    """Run ``attack(*args)`` in a child process; returns (process, result queue)."""
    results: multiprocessing.Queue[Stats] = multiprocessing.Queue()
    process = multiprocessing.Process(target=_child, args=(attack, args, results))
    process.start()
    return process, results


def _child(attack: Callable[..., Awaitable[Stats]], args: Any, results: Any) -> None:
    results.put(asyncio.run(attack(*args)))


async def under_attack(
    client: YClient, attack: Callable[..., Awaitable[Stats]], *args: Any
) -> Stats:
    process, results = in_child(attack, *args)
    ended: list[float] = []

    def attacking() -> bool:  # and for a second after, for what the attack left behind
        if not process.is_alive() and not ended:
            ended.append(time.monotonic())
        return not ended or time.monotonic() < ended[0] + 1.0

    times = await probe_while(client, attacking, "attack")
    process.join()
    return {"probe": summary(times), "attacker": results.get()}


# -- break 1: delete-set frames ---------------------------------------------------------------


async def send_frames(url: str, frame: bytes, count: int) -> Stats:
    started = time.monotonic()
    codes: list[str] = []
    async with websockets.connect(url, max_size=None) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send('{"type":"cancel","id":"hello","prompt_id":"none"}')  # speak JSON
            for _ in range(count):
                await ws.send(frame)
            await ws.send('{"type":"cancel","id":"done","prompt_id":"none"}')
            while True:
                message = await ws.recv()
                if isinstance(message, str):
                    reply = json.loads(message)
                    if reply.get("id") is None:
                        codes.append(reply.get("code"))
                    if reply.get("id") == "done":
                        break
        return {
            "frames": count,
            "frame_bytes": len(frame),
            "refusals": codes,
            "close_code": ws.close_code,
            "judged_in_s": round(time.monotonic() - started, 2),
        }


async def deletes(server: Server) -> Stats:
    sid = await server.session({"erin": "editor", "vera": "viewer"})
    erin = await server.client(sid, "erin")
    for n in range(20):  # one at a time: queued prompts may be answered together
        await erin.command({"type": "prompt", "id": f"p{n}", "text": f"question {n}"})
        await erin.wait_until(lambda c, n=n: all_replies_settled(c, n + 1), timeout=120)
    frame = encode_sync(SyncType.UPDATE, repeated_deletion(erin.doc, FRAME_BYTES))
    before = summary(await baseline(erin, 3))
    during = await under_attack(erin, send_frames, await server.url(sid, "vera"), frame, 3)
    await erin.close()
    return {"baseline": before, **during}


# -- break 4: awareness flood -----------------------------------------------------------------


async def count_bytes(url: str, seconds: float, read_bytes_per_s: float | None) -> Stats:
    received = 0
    async with websockets.connect(url, max_size=None, max_queue=1) as ws:
        await ws.send(SYNC_STEP1_EMPTY)
        end = time.monotonic() + seconds
        with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
            while (left := end - time.monotonic()) > 0:
                message = await asyncio.wait_for(ws.recv(), left)
                received += len(message)
                if read_bytes_per_s is not None:
                    await asyncio.sleep(len(message) / read_bytes_per_s)
    return {"bytes": received, "close_code": ws.close_code}


async def flood_awareness(url: str, seconds: float, frames_per_s: float) -> Stats:
    pad = "x" * 16_250
    sent = frames = 0
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(SYNC_STEP1_EMPTY)
        drain = asyncio.create_task(_discard(ws))  # read the echoes, as a client would
        end = time.monotonic() + seconds
        clock = 0
        with contextlib.suppress(websockets.ConnectionClosed):
            while time.monotonic() < end:
                clock += 1
                states = [AwarenessState(900 + i, clock, {"pad": pad}) for i in range(8)]
                frame = encode_awareness(encode_awareness_update(states))
                await ws.send(frame)
                sent += len(frame)
                frames += 1
                await asyncio.sleep(1 / frames_per_s)
        drain.cancel()
    return {"sent_bytes": sent, "frames": frames, "close_code": ws.close_code}


async def _discard(ws: websockets.ClientConnection) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        async for _ in ws:
            pass


async def _awareness_attack(urls: list[str], slow_url: str, flooder: str) -> Stats:
    seconds = 6.0
    listeners = [count_bytes(u, seconds + 3, None) for u in urls]
    slow = count_bytes(slow_url, seconds + 3, 1_000_000)
    await asyncio.sleep(0.5)  # everyone connected
    results = await asyncio.gather(*listeners, slow, flood_awareness(flooder, seconds, 50))
    heard, slow_result, sent = results[:-2], results[-2], results[-1]
    return {
        "flooder": sent,
        "listeners": len(heard),
        "listener_bytes_total": sum(r["bytes"] for r in heard),
        "slow_reader": slow_result,
    }


async def awareness(server: Server) -> Stats:
    members = {f"l{n}": "viewer" for n in range(21)} | {"mal": "viewer", "erin": "editor"}
    sid = await server.session(members)
    urls = [await server.url(sid, f"l{n}") for n in range(20)]
    slow = await server.url(sid, "l20")
    flooder = await server.url(sid, "mal")
    process, results = in_child(_awareness_attack, urls, slow, flooder)
    await asyncio.to_thread(process.join)
    return dict(results.get())


# -- break 5: sync step 1 loops ---------------------------------------------------------------


async def loop_syncs(urls: list[str], seconds: float) -> Stats:
    received = answers = closes = 0
    end = time.monotonic() + seconds

    async def one(url: str) -> None:
        nonlocal received, answers, closes
        while time.monotonic() < end:
            with contextlib.suppress(websockets.ConnectionClosed, OSError):
                async with websockets.connect(url, max_size=None) as ws:
                    while time.monotonic() < end:
                        await ws.send(SYNC_STEP1_EMPTY)
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.2):
                                while True:
                                    message = await ws.recv()
                                    received += len(message)
                                    if message[:2] == b"\x00\x01":
                                        answers += 1
                                        break
            closes += 1

    await asyncio.gather(*(one(url) for url in urls))
    return {"received_bytes": received, "full_answers": answers, "sockets_closed": closes}


async def sync(server: Server) -> Stats:
    members = {"erin": "editor", "ed": "editor"} | {f"v{n}": "viewer" for n in range(4)}
    sid = await server.session(members)
    ed = await server.client(sid, "ed")
    for n in range(100):
        await ed.command({"type": "message", "id": f"big{n}", "text": f"{n} " + "y" * 30_000})
    erin = await server.client(sid, "erin")
    size = len(erin.doc.get_update())
    before = summary(await baseline(erin, 5))
    urls = [await server.url(sid, f"v{n}") for n in range(4)]
    during = await under_attack(erin, loop_syncs, urls, 10.0)
    await erin.close()
    await ed.close()
    return {"document_bytes": size, "baseline": before, **during}


# -- break 1, in process: what judging one frame costs ------------------------------------------


def judge() -> Stats:
    """Time ``is_noop_update`` on the two frames of break 1 against a document whose queue
    filled and emptied 60 times (no server: the judging alone, on this loop)."""
    doc = SessionDocument(Doc())
    doc.init_meta("s", "judge", "queue")
    for n in range(60):
        doc.add_prompt(id=f"p{n}", seq=n + 1, author="a", text="t", created_at=n)
        doc.set_queue([QueuedItem(f"p{n}", n + 1, "a")])
        doc.set_queue([])
    state = doc.doc.get_state()
    deletes = normalise_delete_set(delete_set_of(doc.doc.get_update(), state))
    distinct = write_var_uint(doc.doc.client_id) + write_var_uint(270_000)
    distinct += b"".join(write_var_uint(10**6 + 2 * i) + b"\x01" for i in range(270_000))
    frames = {
        "repeated_3.9MB": repeated_deletion(doc.doc, FRAME_BYTES),
        "distinct_0.8MB": b"\x00\x01" + distinct,
    }
    capped = "max_delete_ranges" in inspect.signature(is_noop_update).parameters
    result: Stats = {"server_delete_ranges": sum(len(r) for r in deletes.values())}
    for name, update in frames.items():
        started = time.perf_counter()
        try:
            args = (update, state, deletes, 10_000) if capped else (update, state, deletes)
            verdict: Any = "noop" if is_noop_update(*args) else "write"
        except TooLarge:
            verdict = "too_large"
        result[name] = {"verdict": verdict, "ms": round((time.perf_counter() - started) * 1000)}
    return result


SCENARIOS: dict[str, Callable[[Server], Awaitable[Stats]]] = {
    "deletes": deletes,
    "awareness": awareness,
    "sync": sync,
}


async def main(names: list[str]) -> None:
    for name in names:
        if name == "judge":
            print(json.dumps({name: judge()}), flush=True)
            continue
        with tempfile.TemporaryDirectory() as workdir:
            server = Server(Path(workdir))
            try:
                await server.start()
                result = await SCENARIOS[name](server)
            finally:
                await server.http.aclose()
                server.stop()
        print(json.dumps({name: result}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = ["judge", *SCENARIOS]
    parser.add_argument("scenarios", nargs="*", help=f"of {', '.join(names)} (default: all)")
    chosen = parser.parse_args().scenarios or names
    if unknown := set(chosen) - set(names):
        parser.error(f"unknown scenarios: {sorted(unknown)}")
    asyncio.run(main(chosen))
