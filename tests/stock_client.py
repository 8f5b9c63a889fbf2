"""Drive an unmodified stock Yjs client (``tests/js/stock_client.mjs``) from pytest.

The Node script runs the stock ``y-websocket`` ``WebsocketProvider`` against a
server and speaks a line protocol: it prints one JSON event per line on stdout
and answers JSON commands read from stdin. This module wraps that process for
asyncio tests.

Events (all are dicts with an ``"event"`` key)::

    {"event": "status", "status": "connecting" | "connected" | "disconnected"}
    {"event": "sync", "synced": bool, "transcript": int, "meta": dict}  # held then
    {"event": "connection-close", "code": int | None, "reason": str | None, "local": bool}
    {"event": "connection-error", "message": str}
    {"event": "closed", "code": int, "reason": str}   # provider gave up reconnecting
    {"event": "reply", "cmd": str, ...}                # answer to a command
    {"event": "fatal", "where": str, "error": str, ...}
    {"event": "exit", "returncode": int}               # synthesised here on process exit

Commands: ``{"cmd": "dump"}``, ``{"cmd": "write"}``, ``{"cmd": "type", "count": n}`` (n
characters typed into the first entry's text, a transaction each),
``{"cmd": "typing", "value": bool}``, ``{"cmd": "state", "value": any JSON}`` (its
awareness's local state, as is), ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

REPO_ROOT: Path = Path(__file__).resolve().parent.parent
JS_DIR: Path = REPO_ROOT / "tests" / "js"
SCRIPT: Path = JS_DIR / "stock_client.mjs"
REQUIRED_PACKAGES: tuple[str, ...] = ("yjs", "y-websocket", "ws", "axe-core")

Event = dict[str, Any]
Predicate = Callable[[Event], bool]


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"`{name}` was not found on PATH; the stock Yjs client tests need Node.js "
            "(node and npm, Node 20 or newer)."
        )
    return path


def _node_modules_complete() -> bool:
    modules = JS_DIR / "node_modules"
    return modules.is_dir() and all(
        (modules / pkg / "package.json").is_file() for pkg in REQUIRED_PACKAGES
    )


def ensure_node_modules() -> None:
    """Install ``tests/js`` dependencies if ``tests/js/node_modules`` is missing.

    Uses ``npm ci`` when ``package-lock.json`` exists and ``npm install``
    otherwise. Raises :class:`RuntimeError` if node/npm are missing or the
    install fails.
    """
    _require_tool("node")
    npm = _require_tool("npm")
    if _node_modules_complete():
        return
    lock = JS_DIR / "package-lock.json"
    args = [npm, "ci"] if lock.is_file() else [npm, "install"]
    args += ["--no-audit", "--no-fund"]
    result = subprocess.run(
        args,
        cwd=JS_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not _node_modules_complete():
        raise RuntimeError(
            f"`{' '.join(args[1:])}` in {JS_DIR} failed (exit {result.returncode}):\n"
            f"{result.stdout}"
        )


# A dump of a large session is one line of several MB (asyncio's default: 64 KiB).
STDOUT_LINE_MAX_BYTES = 64 * 1024 * 1024


class StockYjsClient:
    """One ``node tests/js/stock_client.mjs`` process."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        #: Every event received, in order (never consumed).
        self.history: list[Event] = []
        #: Events not yet returned by :meth:`wait_event`.
        self._pending: list[Event] = []
        self._cond = asyncio.Condition()
        self._exited = False
        self._stderr: collections.deque[str] = collections.deque(maxlen=200)
        self._cmd_lock = asyncio.Lock()
        self._stdout_task = asyncio.create_task(self._read_stdout())
        self._stderr_task = asyncio.create_task(self._read_stderr())

    @classmethod
    async def start(
        cls, url: str, room: str, token: str, name: str = "stock", *, commands: bool = False
    ) -> Self:
        """Spawn the client; it starts connecting immediately. ``commands``: its provider
        registers a handler for Parley's command message type and opens its socket with
        ``commands: 'binary'`` among its params (and nothing else changes).

        Wait for e.g. ``lambda e: e.get("event") == "sync" and e.get("synced")``
        before relying on the document content.
        """
        node = _require_tool("node")
        if not _node_modules_complete():
            await asyncio.to_thread(ensure_node_modules)
        proc = await asyncio.create_subprocess_exec(
            node,
            str(SCRIPT.relative_to(REPO_ROOT)),
            "--url",
            url,
            "--room",
            room,
            "--token",
            token,
            "--name",
            name,
            *(["--commands"] if commands else []),
            cwd=REPO_ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=STDOUT_LINE_MAX_BYTES,
        )
        return cls(proc, name)

    # -- reading ---------------------------------------------------------

    async def _publish(self, event: Event) -> None:
        async with self._cond:
            self.history.append(event)
            self._pending.append(event)
            if event.get("event") == "exit":
                self._exited = True
            self._cond.notify_all()

    async def _read_stdout(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        while True:
            raw = await stream.readline()
            if not raw:
                break
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not line.strip():
                continue
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                parsed = None
            event: Event = parsed if isinstance(parsed, dict) else {"event": "raw", "line": line}
            await self._publish(event)
        returncode = await self.proc.wait()
        await self._publish({"event": "exit", "returncode": returncode})

    async def _read_stderr(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        while True:
            raw = await stream.readline()
            if not raw:
                break
            self._stderr.append(raw.decode("utf-8", errors="replace").rstrip("\r\n"))

    @property
    def stderr_tail(self) -> str:
        """The last lines the Node process wrote to stderr."""
        return "\n".join(self._stderr)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def _describe(self) -> str:
        recent = self.history[-15:]
        return (
            f"client {self.name!r}; recent events: {json.dumps(recent)[:4000]}; "
            f"stderr tail:\n{self.stderr_tail[-4000:]}"
        )

    async def wait_event(self, predicate: Predicate, timeout: float) -> Event:
        """Return (and consume) the oldest not-yet-consumed event matching ``predicate``.

        Events that do not match stay available for later calls, so the order in
        which a test waits for events does not matter. Raises ``TimeoutError``
        after ``timeout`` seconds and ``RuntimeError`` if the process exited
        without producing a match (unless the predicate matches the synthetic
        ``{"event": "exit"}`` event).
        """
        found: list[Event] = []

        def check() -> bool:
            for i, event in enumerate(self._pending):
                if predicate(event):
                    found.append(self._pending.pop(i))
                    return True
            return self._exited

        try:
            async with asyncio.timeout(timeout):
                async with self._cond:
                    await self._cond.wait_for(check)
        except TimeoutError:
            raise TimeoutError(f"no matching event within {timeout}s; {self._describe()}") from None
        if found:
            return found[0]
        raise RuntimeError(f"stock client exited before a matching event; {self._describe()}")

    # -- commands --------------------------------------------------------

    async def _send(self, cmd: dict[str, Any]) -> None:
        stdin = self.proc.stdin
        if stdin is None or stdin.is_closing() or self._exited:
            raise RuntimeError(f"stock client is not running; {self._describe()}")
        stdin.write((json.dumps(cmd) + "\n").encode("utf-8"))
        await stdin.drain()

    async def command(self, cmd: dict[str, Any], timeout: float = 10) -> Event:
        """Send one command and return its ``{"event": "reply", "cmd": ...}`` line."""
        name = cmd.get("cmd")
        async with self._cmd_lock:
            await self._send(cmd)
            reply = await self.wait_event(
                lambda e: e.get("event") == "reply" and e.get("cmd") == name, timeout
            )
        if "error" in reply:
            raise RuntimeError(f"stock client rejected {cmd!r}: {reply['error']}")
        return reply

    async def dump(self, timeout: float = 10) -> Event:
        return await self.command({"cmd": "dump"}, timeout)

    async def close(self, timeout: float = 5) -> int | None:
        """Quit gracefully (provider.destroy()), killing the process after ``timeout``."""
        if self.proc.returncode is None and not self._exited:
            with contextlib.suppress(RuntimeError, ConnectionError, TimeoutError):
                await self.command({"cmd": "quit"}, timeout)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                await self.proc.stdin.wait_closed()
        await asyncio.gather(self._stdout_task, self._stderr_task, return_exceptions=True)
        return self.proc.returncode

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
