"""Server memory held by clients that stop reading (issue #24, item 2).

Starts ``parley serve`` from ``--repo`` (this checkout by default; point it at another
checkout to compare), builds a session whose shared document is about ``--doc-mib`` MiB,
then opens ``--stuck`` sockets that do the handshake, ask for the first sync and never read
again. It samples the server's RSS (``/proc/<pid>/status``) and the kernel's TCP buffer
pages (``/proc/net/sockstat``) while they hang on, checks that a healthy member still gets
its reply, and reports how soon memory comes back once the server drops them (or, on code
that never drops them, once they close after ``--hold-s``).

    python -m bench.stuck_readers [--repo /work/main] [--stuck 20] [--doc-mib 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

from bench.targets import resident_bytes
from bench.wsclient import WSClient, connect
from parley.session.yprotocol import SyncType, encode_sync

ADMIN_KEY = "bench-admin-key"
SECRET_KEY = "bench-secret-key-0123456789abcdef0123"
MESSAGE_CHARS = 32_000
MIB = 1024 * 1024


def rss_mib(pid: int) -> float:
    return resident_bytes(pid) / MIB


def tcp_buffer_mib() -> float:
    """Memory the kernel holds in TCP buffers, all sockets of the machine."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") / MIB
    return 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def unsent_metric(http: httpx.AsyncClient) -> dict[str, float]:
    """The send-path metrics the server exports (none on code that has none)."""
    values: dict[str, float] = {}
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith(("parley_send_drops_total", "parley_send_unsent", "parley_slow_")):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def command(ws: Any, body: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(body))
    while True:
        reply = await ws.recv()
        if isinstance(reply, str):
            answer: dict[str, Any] = json.loads(reply)
            if answer.get("id") == body["id"]:
                return answer


def spawn(args: argparse.Namespace, port: int, data: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PARLEY_DATABASE_URL": f"sqlite+aiosqlite:///{data / 'parley.db'}",
        "PARLEY_DATA_DIR": str(data),
        "PARLEY_ADMIN_KEY": ADMIN_KEY,
        "PARLEY_SECRET_KEY": SECRET_KEY,
        "PARLEY_LOG_LEVEL": "warning",
        "PARLEY_COMMANDS_PER_SECOND": "1000",
        "PARLEY_COMMANDS_BURST": "1000",
        "PARLEY_USER_COMMANDS_PER_SECOND": "1000",
        "PARLEY_SEND_STALL_TIMEOUT_S": str(args.stall_timeout_s),
        "PYTHONPATH": str(args.repo),
    }
    with open(data / "server.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "parley.server.cli", "serve", "--port", str(port)],
            cwd=args.repo,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def run(
    args: argparse.Namespace, server: subprocess.Popen[bytes], port: int
) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
        ) as http:
            for _ in range(300):
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            sid = (await http.post("/api/v1/sessions", json={"title": "big"})).json()["id"]
            for user in ["alice"] + [f"s{n}" for n in range(args.stuck)]:
                role = "editor" if user == "alice" else "viewer"
                await http.put(f"/api/v1/sessions/{sid}/members/{user}", json={"role": role})

            async def token(user: str) -> str:
                reply = await http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": user})
                return str(reply.json()["token"])

            ws_url = f"ws://127.0.0.1:{port}/ws/sessions/{sid}"
            alice_url = f"{ws_url}?token={await token('alice')}"
            alice = await websockets.connect(alice_url, max_size=None)
            text = "x" * MESSAGE_CHARS
            for n in range(int(args.doc_mib * MIB / MESSAGE_CHARS) + 1):
                reply = await command(alice, {"type": "message", "id": f"m{n}", "text": text})
                assert reply["type"] == "ack", reply
            # A reader that syncs the whole document once, so the baseline has paid for it.
            synced = asyncio.get_running_loop().create_future()

            def on_message(message: bytes | str) -> None:
                big = isinstance(message, bytes) and len(message) > args.doc_mib * MIB / 2
                if big and not synced.done():
                    synced.set_result(len(message))

            reader = await connect(f"{ws_url}?token={await token('alice')}", on_message)
            reader.send(encode_sync(SyncType.STEP1, b"\x00"))
            sync_bytes = await asyncio.wait_for(synced, 60)
            reader.close()
            await asyncio.sleep(2)
            baseline = rss_mib(server.pid)
            kernel_baseline = tcp_buffer_mib()

            stuck: list[WSClient] = []
            for n in range(args.stuck):
                client = await connect(f"{ws_url}?token={await token(f's{n}')}", lambda m: None)
                client.send(encode_sync(SyncType.STEP1, b"\x00"))
                assert client.transport is not None
                client.transport.pause_reading()  # and never reads again
                stuck.append(client)
            joined = time.monotonic()

            samples: list[tuple[float, float, float]] = []
            healthy_reply_s: float | None = None
            asked = time.monotonic()
            answer = await command(alice, {"type": "message", "id": "still-here", "text": "hi"})
            if answer["type"] == "ack":
                healthy_reply_s = time.monotonic() - asked
            await asyncio.sleep(1)
            metrics_joined = await unsent_metric(http)
            while time.monotonic() - joined < args.hold_s:
                samples.append((time.monotonic() - joined, rss_mib(server.pid), tcp_buffer_mib()))
                await asyncio.sleep(0.25)
            metrics_held = await unsent_metric(http)
            for client in stuck:
                if client.transport is not None:
                    client.transport.abort()
            closed = time.monotonic()
            after: list[tuple[float, float, float]] = []
            while time.monotonic() - closed < 5:
                after.append((time.monotonic() - closed, rss_mib(server.pid), tcp_buffer_mib()))
                await asyncio.sleep(0.25)
            await alice.close()

        peak = max(s[1] for s in samples)
        kernel_peak = max(s[2] for s in samples)
        near = baseline + 0.25 * (peak - baseline)
        dropped_at = next(
            (t for t, rss, _ in samples if t > 1 and peak - baseline > 8 and rss <= near), None
        )
        peak_at = next(t for t, rss, _ in samples if rss == peak)
        return {
            "stuck_clients": args.stuck,
            "sync_frame_mib": round(sync_bytes / MIB, 2),
            "rss_baseline_mib": round(baseline, 1),
            "rss_peak_mib": round(peak, 1),
            "rss_peak_at_s": round(peak_at, 2),
            "rss_at_end_of_hold_mib": round(samples[-1][1], 1),
            "rss_back_within_quarter_at_s": None if dropped_at is None else round(dropped_at, 2),
            "rss_after_clients_closed_mib": round(after[-1][1], 1),
            "kernel_tcp_baseline_mib": round(kernel_baseline, 1),
            "kernel_tcp_peak_mib": round(kernel_peak, 1),
            "kernel_tcp_at_end_of_hold_mib": round(samples[-1][2], 1),
            "healthy_member_ack_s": None if healthy_reply_s is None else round(healthy_reply_s, 3),
            "metrics_1s_after_join": metrics_joined,
            "metrics_at_end_of_hold": metrics_held,
            "timeline": [(round(t, 2), round(r, 1), round(k, 1)) for t, r, k in samples[::4]],
        }
    finally:
        await asyncio.to_thread(stop, server)


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--stuck", type=int, default=20)
    parser.add_argument("--doc-mib", type=float, default=4.0)
    parser.add_argument("--hold-s", type=float, default=30.0)
    parser.add_argument("--stall-timeout-s", type=float, default=10.0)
    args = parser.parse_args()
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="stuck-readers-"))
    result = asyncio.run(run(args, spawn(args, port, data), port))
    timeline = result.pop("timeline")
    print(json.dumps(result, indent=1))
    print("timeline (s after join, server RSS MiB, kernel TCP MiB):", json.dumps(timeline))


if __name__ == "__main__":
    main()
