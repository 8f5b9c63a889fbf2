"""Fixtures that run the real app: uvicorn on a free loopback port, SQLite or PostgreSQL.

PostgreSQL tests use ``PARLEY_TEST_POSTGRES_URL`` (default: the local server) and a fresh
database per test; a migrated one is a clone of a template migrated once per test process
(a SQLite one a copy of a migrated file), which costs a fraction of migrating it.
Without a reachable server they skip with the reason shown, unless
``PARLEY_TEST_REQUIRE_POSTGRES=1`` (set by ``.ci/run``), which turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, settings
from sqlalchemy import make_url, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.app import create_app
from parley.server.cli import ParleyServer, uvicorn_config
from parley.server.settings import Settings
from parley.server.store.db import migrate
from parley.server.store.sessions import Store
from parley.server.store.sqlite_inline import file_path
from parley.server.store.tables import entries
from parley.session.model import ModelProvider
from tests.fake_model import FakeModel
from tests.yclient import YClient

ADMIN_KEY = "test-admin-key"
SECRET_KEY = "test-secret-key-0123456789abcdef0123"
POSTGRES_URL = os.environ.get(
    "PARLEY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_POSTGRES = os.environ.get("PARLEY_TEST_REQUIRE_POSTGRES") == "1"
REPO_ROOT = Path(__file__).resolve().parent.parent
# The test clients' TLS context, built once: httpx builds one per client otherwise, reading
# every CA (20-30 ms), for clients of plain-HTTP loopback servers.
TLS = httpx.create_ssl_context()

# Property tests: locally, fresh examples each run and a database that replays the ones that
# failed; in CI (``.ci/run`` sets the profile), the same examples on every run, so a class of
# inputs a test's strategy is built to reach is found every time, not by luck. Failures
# worth keeping for good are written into the tests with ``@example``.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
if os.environ.get("PARLEY_TEST_HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["PARLEY_TEST_HYPOTHESIS_PROFILE"])


async def _postgres_reachable() -> str | None:
    try:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=3)
    except Exception as exc:
        return f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}"
    await conn.close()
    return None


@contextlib.asynccontextmanager
async def postgres_database(*, migrated: bool = False) -> AsyncIterator[str]:
    """A fresh database for one test, dropped afterwards: empty, or ``migrated`` to head
    (a clone of this process's migrated template, as migrating each costs more)."""
    problem = await _postgres_reachable()
    if problem is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required here: {problem}")
        pytest.skip(problem)
    name = f"parley_test_{uuid.uuid4().hex[:12]}"
    template = f' TEMPLATE "{await asyncio.to_thread(_postgres_template)}"' if migrated else ""
    await _admin(f'CREATE DATABASE "{name}"{template}')
    url = f"{_POSTGRES_BASE}/{name}"
    if migrated:
        MIGRATED.add(url)
    try:
        yield url
    finally:
        MIGRATED.discard(url)
        _drop_later(name)


# -- databases migrated once per test process (an xdist worker) ---------------------------------

_POSTGRES_BASE = POSTGRES_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
# The URLs of this process's databases made as copies of a migrated template.
MIGRATED: set[str] = set()
_templates: dict[str, str] = {}  # "postgres": the template's name; "sqlite": its file
_templates_lock = threading.Lock()


def _postgres_template() -> str:
    """This process's migrated database that the others are cloned from
    (``CREATE DATABASE ... TEMPLATE``); nothing else connects to it."""
    with _templates_lock:
        if "postgres" not in _templates:
            name = f"parley_template_{os.getpid()}_{uuid.uuid4().hex[:6]}"
            asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
            _templates["postgres"] = name  # dropped at the session's end, even half-migrated
            migrate(f"{_POSTGRES_BASE}/{name}")
        return _templates["postgres"]


# A test's database is dropped on this thread while the next test runs: a drop waits on the
# disk (0.1-1.3 s), and at every test's end it was a third of a PostgreSQL test's own time.
_DROPPER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="drop-db")
_drops: list[concurrent.futures.Future[None]] = []
DROP_ATTEMPTS = 30  # a drop sent as a test restarts PostgreSQL is sent again once it is back
DROP_WAIT_S = 120.0  # the most the session's end waits for one drop (TimeoutError past it)


def _drop_later(name: str) -> None:
    """Drop database ``name`` on the dropping thread; ``_drop_templates`` waits for it."""
    _drops.append(_DROPPER.submit(_drop_database, name))


def _drop_database(name: str) -> None:
    for attempt in range(DROP_ATTEMPTS):
        try:
            asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except (OSError, asyncpg.OperatorInterventionError, asyncpg.PostgresConnectionError):
            if attempt == DROP_ATTEMPTS - 1:
                raise
            time.sleep(1)


async def _admin(statement: str) -> None:
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


async def migrated_database(url: str) -> None:
    """Migrate the database of ``url`` to head, as ``parley serve`` does before it serves:
    a database made as a migrated copy is left as it is, and a SQLite file not made yet
    becomes a copy of this process's migrated one."""
    if url not in MIGRATED:
        await asyncio.to_thread(_migrate_or_copy, url)


def _migrate_or_copy(url: str) -> None:
    path = file_path(make_url(url)) if url.startswith("sqlite") else None
    if path is None or Path(path).exists():
        migrate(url)
        return
    with _templates_lock:
        if "sqlite" not in _templates:
            template = Path(tempfile.mkdtemp(prefix="parley-template-")) / "parley.db"
            migrate(f"sqlite+aiosqlite:///{template}")
            # The migration's engine checkpointed and closed: the file holds everything.
            assert not template.with_name("parley.db-wal").exists()
            _templates["sqlite"] = str(template)
    shutil.copyfile(_templates["sqlite"], path)
    MIGRATED.add(url)


def _drop_templates() -> None:
    """Wait for the tests' databases to be dropped (raising the first drop that failed),
    then drop this process's templates."""
    failed = [e for e in (f.exception(DROP_WAIT_S) for f in _drops) if e is not None]
    _drops.clear()
    if "sqlite" in _templates:
        shutil.rmtree(Path(_templates["sqlite"]).parent, ignore_errors=True)
    if "postgres" in _templates:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{_templates["postgres"]}" WITH (FORCE)'))
    _templates.clear()
    if failed:
        raise RuntimeError(f"{len(failed)} test databases were not dropped") from failed[0]


async def wait_for_a_lock_wait(engine: AsyncEngine, timeout_s: float = 10) -> None:
    """Return once a session of this PostgreSQL database waits on a lock.

    Each poll is its own transaction: PostgreSQL keeps ``pg_stat_activity`` as it first read
    it until the transaction ends, so polling inside one would never see the wait begin."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with asyncio.timeout(timeout_s):
        for _ in range(100_000):  # bounded by the time-out
            async with engine.connect() as connection:
                if (await connection.execute(query)).scalar_one():
                    return
            await asyncio.sleep(0.01)


DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=DATABASES)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database of one test, migrated to head."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path)
        await migrated_database(url)
        yield url
        return
    async with postgres_database(migrated=True) as url:
        yield url


@pytest.fixture(params=DATABASES)
async def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database of one test with nothing in it, for tests of the migrations."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    async with postgres_database() as url:
        yield url


async def entry_columns(store: Store, entry_id: str, *columns: str) -> tuple[Any, ...]:
    """The named ``columns`` of the stored row of ``entry_id``, in that order."""
    async with store.read() as connection:
        chosen = select(*(entries.c[name] for name in columns))
        return tuple((await connection.execute(chosen.where(entries.c.id == entry_id))).one())


def sqlite_url(tmp_path: Path, name: str = "parley.db") -> str:
    """A SQLite database file of one test."""
    return f"sqlite+aiosqlite:///{tmp_path / name}"


# Ports ``free_port`` handed out in this process: the kernel may give a port just closed
# again at once, and two nodes of one cluster given the same port shared it and its log
# (one bound it, the other never listened, and the test waited out its start).
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before by this process."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a listening TCP socket on ``port`` (read from /proc)."""
    owned = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owned.add(target[len("socket:[") : -1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port and inode in owned:
                    return True
    return False


def make_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "admin_key": ADMIN_KEY,
        "secret_key": SECRET_KEY,
        "offline_token_delay_ms": 1.0,
        "max_pending_per_user": 50,
        "max_pending_per_session": 1000,
        "log_level": "warning",
        # A child process per test server would cost a second each; the sender's process
        # has tests of its own (tests/server/test_sender_process.py).
        "webhook_sender": "loop",
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class RunningServer:
    """A live Parley: its URLs, an authenticated admin HTTP client, and helpers."""

    base_url: str
    ws_url: str
    http: httpx.AsyncClient
    clients: list[YClient] = field(default_factory=list)
    app: Any = None  # the Starlette app, for tests that look inside

    async def new_session(self, members: dict[str, str], title: str = "test") -> str:
        response = await self.http.post("/api/v1/sessions", json={"title": title})
        assert response.status_code == 201, response.text
        session_id: str = response.json()["id"]
        for user_id, role in members.items():
            put = await self.http.put(
                f"/api/v1/sessions/{session_id}/members/{user_id}", json={"role": role}
            )
            assert put.status_code == 200, put.text
        return session_id

    async def token(self, session_id: str, user_id: str, ttl_seconds: int | None = None) -> str:
        body: dict[str, Any] = {"user_id": user_id}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        response = await self.http.post(f"/api/v1/sessions/{session_id}/tokens", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    async def link_token(self, session_id: str, maker: str, user_id: str) -> str:
        """A client token of ``user_id`` exchanged from an invite link ``maker`` minted."""
        minted = await self.http.post(
            f"/api/v1/sessions/{session_id}/invites",
            json={"user_id": user_id},
            headers={"Authorization": f"Bearer {await self.token(session_id, maker)}"},
        )
        assert minted.status_code == 201, minted.text
        exchanged = await self.http.post(
            "/api/v1/invites/exchange",
            json={"invite": minted.json()["secret"]},
            headers={"Authorization": ""},
        )
        assert exchanged.status_code == 200, exchanged.text
        return str(exchanged.json()["token"])

    async def thread_url(self, session_id: str, token: str) -> str:
        """A side-thread opened with the member's ``token``: its socket's URL, with it."""
        opened = await self.http.post(
            f"/api/v1/sessions/{session_id}/threads",
            json={"title": "t"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert opened.status_code == 201, opened.text
        thread_id = opened.json()["thread_id"]
        return f"{self.ws_url}/ws/sessions/{session_id}/threads/{thread_id}?token={token}"

    async def connect(
        self, session_id: str, user_id: str, *, synced: bool = True, commands: str | None = None
    ) -> YClient:
        client = await YClient.connect(
            self.ws_url, session_id, await self.token(session_id, user_id), commands=commands
        )
        self.clients.append(client)
        if synced:
            async with asyncio.timeout(10):
                await client.synced.wait()
        return client

    async def transcript(self, session_id: str) -> list[dict[str, Any]]:
        response = await self.http.get(f"/api/v1/sessions/{session_id}/transcript")
        assert response.status_code == 200, response.text
        messages: list[dict[str, Any]] = response.json()["messages"]
        return messages


@contextlib.asynccontextmanager
async def serve_asgi(app: Any, **config: Any) -> AsyncIterator[int]:
    """Serve a small ASGI app (a receiver, a tool server) on a free loopback port; yields
    the port. ``config``: more of uvicorn's settings (``ssl_certfile``, ...)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **config))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


@contextlib.asynccontextmanager
async def serve_in_process(
    settings: Settings, model: FakeModel | ModelProvider | None = None, *, ws: str | None = None
) -> AsyncIterator[RunningServer]:
    """``model``: a ``FakeModel`` (the only configured model, reached through the real
    provider) or a provider that answers every call. ``ws``: another of uvicorn's WebSocket
    implementations than ``parley serve``'s."""
    await migrated_database(settings.database_url)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if isinstance(model, FakeModel):
        app = create_app(model.configure(settings), transport=model.transport)
    else:
        app = create_app(settings, provider=model)
    config = uvicorn_config(app, settings)
    # The tests' HTTP clients keep a pooled connection across waits of seconds; with
    # uvicorn's 5 s keep-alive the server could close one just as a request was written on
    # it (one loop runs both), and the request failed with a ReadError.
    config.timeout_keep_alive = 600
    if ws is not None:
        config.ws = ws
    server = ParleyServer(config, app)
    task = asyncio.create_task(_serve(server, sock))
    try:
        async with asyncio.timeout(60):  # a sender's process starts in 1 s, 20 on a busy machine
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
    except BaseException:
        server.should_exit = True
        sock.close()
        raise
    base = f"http://127.0.0.1:{port}"
    http = httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=20, verify=TLS
    )
    running = RunningServer(base, f"ws://127.0.0.1:{port}", http, app=app)
    try:
        yield running
    finally:
        for client in running.clients:
            await client.close()
        await http.aclose()
        server.should_exit = True
        async with asyncio.timeout(20):
            await task
        sock.close()


async def _serve(server: ParleyServer, sock: socket.socket) -> None:
    """uvicorn ends a start-up that failed with ``sys.exit``: a ``SystemExit`` out of a task
    stops the event loop itself, so one test's failed start broke every later test of its
    worker. Here it fails that test alone."""
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:
        raise RuntimeError(f"the server did not start (exit status {exc.code})") from None


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with serve_in_process(make_settings(database_url, tmp_path / "data")) as running:
        yield running


@pytest.fixture
async def sqlite_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """For tests of behaviour that does not depend on the database."""
    url = sqlite_url(tmp_path)
    async with serve_in_process(make_settings(url, tmp_path / "data")) as running:
        yield running


class ServerProcess:
    """``parley serve`` in a subprocess, for tests that kill and restart it."""

    def __init__(self, database_url: str, data_dir: Path, port: int, **env: str) -> None:
        self._use_port(port)
        self.env = {
            **os.environ,
            "PARLEY_DATABASE_URL": database_url,
            "PARLEY_DATA_DIR": str(data_dir),
            "PARLEY_ADMIN_KEY": ADMIN_KEY,
            "PARLEY_SECRET_KEY": SECRET_KEY,
            "PARLEY_LOG_LEVEL": "warning",
            "PARLEY_MAX_PENDING_PER_USER": "50",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.started = False

    def _use_port(self, port: int) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"

    @property
    def log(self) -> Path:
        return Path(self.env["PARLEY_DATA_DIR"]) / f"server-{self.port}.log"

    def spawn(self) -> None:
        Path(self.env["PARLEY_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "parley.server.cli", "serve", "--port", str(self.port)],
                env=self.env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start(self) -> None:
        """Spawn the server and wait until it answers ``/healthz`` from its own socket.

        The port was free when ``free_port()`` picked it, but another test's server (another
        worker's) may have bound it since. Then this process cannot listen and that server
        answers the health check, and the test would talk to a stranger ("no session"). So
        the answer counts only once this process holds the listening socket, and a first
        start whose port was taken picks another."""
        self.spawn()
        assert self.process is not None
        deadline = time.monotonic() + 60  # with its sender's process (as above)
        async with httpx.AsyncClient(verify=TLS) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    log = self.log.read_text()
                    if not self.started and "address already in use" in log.lower():
                        self._use_port(free_port())
                        self.spawn()
                        continue
                    raise RuntimeError(f"server exited: {log[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    answered = (await http.get(f"{self.base_url}/healthz")).status_code == 200
                    if answered and listens(self.process.pid, self.port):
                        self.started = True
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def sender_processes(parent: int) -> list[int]:
    """The live webhook sender processes whose parent is ``parent`` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and process_running(int(entry.name), parent):
            with contextlib.suppress(OSError):
                if b"sender_child" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def process_running(pid: int, parent: int | None = None) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not), and is a child
    of ``parent`` if given."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return state != "Z" and (parent is None or int(ppid) == parent)


@pytest.fixture
def server_processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for process in started:
        process.stop()


# -- live tests: collected only when their key is set ------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (not skip: CI fails on skips) tests marked ``live(env=...)`` whose
    environment variable is unset."""
    absent = [
        item
        for item in items
        if (marker := item.get_closest_marker("live")) is not None
        and not os.environ.get(marker.kwargs["env"])
    ]
    if absent:
        config.hook.pytest_deselected(items=absent)
        items[:] = [item for item in items if item not in absent]


# -- CI: a skipped test is a failed run --------------------------------------------------------

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _drop_templates()
    if os.environ.get("PARLEY_TEST_FORBID_SKIPS") == "1" and _skipped:
        print(f"\nPARLEY_TEST_FORBID_SKIPS=1 and {len(_skipped)} tests were skipped:")
        for nodeid in _skipped:
            print(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# -- parallel runs -----------------------------------------------------------------------------


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers for ``-n auto``: half again as many as cores. Many tests wait on a server
    process, a browser or the database; two workers on two cores left a third of the
    CPU idle."""
    cores = os.cpu_count() or 1
    return max(2, cores + cores // 2)
