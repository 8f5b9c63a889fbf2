"""Client worker processes: stock-protocol subscribers and prompt senders, sharded.

Each worker runs one uvloop event loop with many sockets and obeys commands from the
benchmark over a pipe. A subscriber speaks y-websocket (sync step 1 on connect, then
applies every sync step 2 and update to its own pycrdt document) and notes, for each
token of the armed round, when its document first held it (``time.monotonic()``, shared
by every process on the machine). Tokens are fixed-width, so "holds token i" is "the
reply text is longer than i x width".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import random
import time
from array import array
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

from pycrdt import Array, Doc, Text

from bench.targets import process_cpu_seconds
from bench.wsclient import WSClient, connect

TOKEN_WIDTH = 8
CONNECT_CONCURRENCY = 64
RESYNC_S = 2.0
SYNC_STEP1_EMPTY = b"\x00\x00\x01\x00"  # sync, step 1, an empty state vector


def _varuint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


class Subscriber:
    """One socket and its document. ``layout`` says where the streamed text lives:
    ``parley`` (the newest reply entry's ``content``) or ``text`` (the root Y.Text);
    ``none`` keeps no document (a socket that only sends prompts)."""

    def __init__(self, layout: str) -> None:
        self.layout = layout
        self.doc: Doc = Doc()
        self.transcript: Array[Any] | None = None
        self.root_text: Text | None = None
        if layout == "parley":
            self.transcript = self.doc.get("transcript", type=Array)
        elif layout == "text":
            self.root_text = self.doc.get("text", type=Text)
        self.socket: WSClient | None = None
        self.synced = asyncio.get_running_loop().create_future()
        self.acks: dict[str, float] = {}
        self.pending: dict[str, asyncio.Future[None]] = {}
        self.disarm()

    def disarm(self) -> None:
        self.armed = False
        self.target: Text | None = None
        self.base_entries = 0
        self.base_chars = 0
        self.tokens = 0
        self.held = 0
        self.updates = 0
        self.holds = array("d")
        self.done: asyncio.Future[None] | None = None

    def arm(self, tokens: int) -> None:
        self.disarm()
        self.tokens = tokens
        self.holds = array("d", bytes(8 * tokens))
        self.done = asyncio.get_running_loop().create_future()
        if self.transcript is not None:
            self.base_entries = len(self.transcript)
        if self.root_text is not None:
            self.target = self.root_text
            self.base_chars = len(self.root_text)
        self.armed = True
        if tokens == 0:
            self.done.set_result(None)

    def send_prompt(self, command_id: str) -> asyncio.Future[None]:
        """Send a one-token bench prompt; the future resolves when its reply arrives."""
        assert self.socket is not None
        waiter = self.pending[command_id] = asyncio.get_running_loop().create_future()
        self.socket.send(_prompt(command_id))
        return waiter

    def on_message(self, message: bytes | str) -> None:
        if isinstance(message, str):
            reply = json.loads(message)
            now = time.monotonic()
            command_id = reply.get("id")
            self.acks[command_id] = now
            waiter = self.pending.pop(command_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if not message or message[0] != 0:
            return  # awareness and the like: not what is measured
        sync_type, pos = _varuint(message, 1)
        if sync_type == 0:
            return  # the server asks for our state: we have none to give
        if sync_type == 1 and not self.synced.done():
            self.synced.set_result(None)
        if self.layout == "none":
            return  # a prompt sender: the document is not what it measures
        size, pos = _varuint(message, pos)
        self.doc.apply_update(message[pos : pos + size])
        if self.armed:
            self.updates += 1
            self._observe()

    def _observe(self) -> None:
        target = self.target
        if target is None:
            transcript = self.transcript
            if transcript is None:
                return
            for index in range(self.base_entries, len(transcript)):
                entry = transcript[index]
                if entry.get("kind") == "reply":
                    target = self.target = entry["content"]
                    break
            if target is None:
                return
        held = (len(target) - self.base_chars) // TOKEN_WIDTH
        if held > self.held:
            now = time.monotonic()
            held = min(held, self.tokens)
            for index in range(self.held, held):
                self.holds[index] = now
            self.held = held
            if held >= self.tokens and self.done is not None and not self.done.done():
                self.done.set_result(None)


class Worker:
    """The command loop of one client process (see ``ClientPool`` for the commands)."""

    def __init__(self, pipe: Connection) -> None:
        self.pipe = pipe
        self.subscribers: list[Subscriber] = []

    async def serve(self) -> None:
        handlers: dict[str, Callable[..., Awaitable[Any]]] = {
            "connect": self.connect,
            "arm": self.arm,
            "collect": self.collect,
            "prompt_each": self.prompt_each,
            "prompt_open_loop": self.prompt_open_loop,
            "open_sockets": self.open_sockets,
            "close": self.close,
            "exit": self.close,
        }
        while True:
            command, kwargs = await asyncio.to_thread(self.pipe.recv)
            try:
                result = await handlers[command](**kwargs)
            except Exception as exc:
                self.pipe.send(("error", f"{type(exc).__name__}: {exc}"))
            else:
                self.pipe.send(("ok", result))
            if command == "exit":
                return

    async def connect(self, urls: list[str], layout: str, timeout_s: float) -> int:
        limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(url: str) -> Subscriber:
            async with limit:
                subscriber = Subscriber(layout)
                subscriber.socket = await connect(url, subscriber.on_message, timeout_s)
                deadline = time.monotonic() + timeout_s
                # Ask again if no answer comes (as y-websocket's resyncInterval does):
                # pycrdt-websocket can lose a step 1 that races a room's start.
                while not subscriber.synced.done():
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"no sync step 2 from {url} in {timeout_s:g} s")
                    subscriber.socket.send(SYNC_STEP1_EMPTY)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(subscriber.synced), RESYNC_S)
                return subscriber

        self.subscribers += await asyncio.gather(*(one(url) for url in urls))
        return len(self.subscribers)

    async def arm(self, tokens: int) -> int:
        for subscriber in self.subscribers:
            subscriber.arm(tokens)
        return len(self.subscribers)

    async def collect(self, timeout_s: float) -> list[tuple[bytes, int]]:
        """Wait until every subscriber holds every token (or the timeout); return each
        one's hold times as packed doubles (0.0: never held) and how many document
        updates it applied while armed."""
        waits = [s.done for s in self.subscribers if s.done is not None]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*waits)
        holds = [(s.holds.tobytes(), s.updates) for s in self.subscribers]
        for subscriber in self.subscribers:
            subscriber.disarm()
        return holds

    async def prompt_each(self, count: int, prefix: str, timeout_s: float) -> list[list[Any]]:
        """Closed loop: every socket sends ``count`` prompts, each after the previous ack.
        Returns ``[command id, sent, acked or None]`` per prompt."""

        async def run(index: int, subscriber: Subscriber) -> list[list[Any]]:
            assert subscriber.socket is not None
            records = []
            for n in range(count):
                command_id = f"{prefix}-{index}-{n}"
                sent = time.monotonic()
                waiter = subscriber.send_prompt(command_id)
                try:
                    await asyncio.wait_for(waiter, timeout_s)
                except TimeoutError:
                    records.append([command_id, sent, None])
                    break  # this socket is stuck: the rest of the run goes on without it
                records.append([command_id, sent, subscriber.acks.pop(command_id)])
            return records

        results = await asyncio.gather(*(run(i, s) for i, s in enumerate(self.subscribers)))
        return [record for records in results for record in records]

    async def prompt_open_loop(
        self, rate: float, count: int, prefix: str, timeout_s: float, seed: int = 0
    ) -> list[list[Any]]:
        """Open loop: ``count`` prompts at ``rate`` per second on average, round-robin over
        sockets, whatever the acks do. The gaps are random (exponential, from ``seed``), as
        members who do not know of each other send them: the shards' prompts together
        arrive at the sum of their rates, never in step. Returns ``[command id, sent, acked
        or None]`` per prompt."""
        sent: dict[str, float] = {}
        owners: dict[str, Subscriber] = {}
        waiters = []
        gaps = random.Random(seed)
        due = time.monotonic()
        for n in range(count):
            due += gaps.expovariate(rate)
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            subscriber = self.subscribers[n % len(self.subscribers)]
            command_id = f"{prefix}-{n}"
            sent[command_id] = time.monotonic()
            owners[command_id] = subscriber
            waiters.append(subscriber.send_prompt(command_id))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*waiters)
        return [[c, t, owners[c].acks.pop(c, None)] for c, t in sent.items()]

    async def open_sockets(self) -> int:
        sockets = [s.socket for s in self.subscribers if s.socket is not None]
        return sum(1 for socket in sockets if not socket.closed.done())

    async def close(self) -> int:
        """Close every socket (waiting for the closing handshakes, within bounds)."""
        subscribers, self.subscribers = self.subscribers, []
        for subscriber in subscribers:
            if subscriber.socket is not None:
                subscriber.socket.close()
        closing = [s.socket.closed for s in subscribers if s.socket is not None]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(20):
                await asyncio.gather(*closing, return_exceptions=True)
        for subscriber in subscribers:
            if subscriber.socket is not None and subscriber.socket.transport is not None:
                subscriber.socket.transport.abort()
        return len(subscribers)


def _prompt(command_id: str, tokens: int = 1) -> str:
    text = f"bench tokens={tokens} rate=0 id={command_id}"
    return json.dumps({"type": "prompt", "id": command_id, "text": text})


def _worker_main(pipe: Connection) -> None:
    import uvloop

    uvloop.run(Worker(pipe).serve())


class ClientPool:
    """Client worker processes, and the commands the benchmark gives them."""

    def __init__(self, shards: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes = []
        for _ in range(shards):
            ours, theirs = context.Pipe()
            process = context.Process(target=_worker_main, args=(theirs,), daemon=True)
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)

    async def call(self, command: str, per_shard: list[dict[str, Any]]) -> list[Any]:
        """Send each shard its arguments, then wait for every answer."""
        for pipe, kwargs in zip(self.pipes, per_shard, strict=True):
            pipe.send((command, kwargs))
        results = []
        for pipe in self.pipes:
            status, value = await asyncio.to_thread(pipe.recv)
            if status != "ok":
                raise RuntimeError(f"client worker failed in {command}: {value}")
            results.append(value)
        return results

    async def call_all(self, command: str, **kwargs: Any) -> list[Any]:
        return await self.call(command, [kwargs] * len(self.pipes))

    def cpu_seconds(self) -> float:
        """CPU time the client workers have used so far, together."""
        return sum(process_cpu_seconds(p.pid) for p in self.processes if p.pid is not None)

    def split(self, items: list[Any]) -> list[list[Any]]:
        """Deal ``items`` round-robin over the shards."""
        return [items[i :: len(self.pipes)] for i in range(len(self.pipes))]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.call_all("exit"), 30)
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
