"""One server off-cluster per database (review R1-1): a second ``parley serve`` on the same
database, a cluster node beside it, or a migration under it is refused while it runs, and
starts once it stopped, however it stopped (SIGKILL: the kernel, or PostgreSQL, drops the
claim with the process)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import make_url

from parley.server.app import create_app
from parley.server.store.claim import ADVISORY_KEY, EXIT_CLAIM_LOST
from parley.session.errors import DatabaseInUse
from tests.conftest import (
    REPO_ROOT,
    ServerProcess,
    free_port,
    make_settings,
    postgres_database,
    process_running,
)

REFUSED = "another Parley process holds the database"


def parley(
    database_url: str, tmp_path: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``parley ...`` in a process of its own, to its end."""
    probe = ServerProcess(database_url, tmp_path / "data-cli", 0, **env)
    return subprocess.run(
        [sys.executable, "-m", "parley.server.cli", *args],
        env=probe.env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def refused_serving(database_url: str, tmp_path: Path, **env: str) -> str:
    done = parley(database_url, tmp_path, "serve", "--port", str(free_port()), **env)
    assert done.returncode == 2, done.stderr
    return done.stderr


async def refused_app(database_url: str, tmp_path: Path) -> None:
    """The app's own start-up (another ASGI server than ``parley serve``) is refused too."""
    app = create_app(make_settings(database_url, tmp_path / "data-app"))
    with pytest.raises(DatabaseInUse, match=REFUSED):
        async with app.router.lifespan_context(app):
            pass


async def started(
    processes: list[ServerProcess], database_url: str, data_dir: Path, **env: str
) -> ServerProcess:
    """``parley serve`` started, stopped at the test's end (``server_processes``)."""
    process = ServerProcess(database_url, data_dir, free_port(), **env)
    processes.append(process)
    await process.start()
    return process


async def test_a_second_server_is_refused_until_the_first_is_killed(
    database_url: str, tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    first = await started(server_processes, database_url, tmp_path / "a")
    assert first.process is not None
    stderr = refused_serving(database_url, tmp_path)
    assert REFUSED in stderr and f"pid {first.process.pid}" in stderr
    assert stderr.count("\n") <= 2  # one line (after the key's log line)
    await refused_app(database_url, tmp_path)
    migration = parley(database_url, tmp_path, "migrate")
    assert migration.returncode == 2 and REFUSED in migration.stderr

    first.kill()  # SIGKILL: nothing of the process releases anything
    second = await started(server_processes, database_url, tmp_path / "b")
    await refused_app(database_url, tmp_path)

    second.stop()  # SIGTERM
    app = create_app(make_settings(database_url, tmp_path / "data-app"))
    async with app.router.lifespan_context(app):
        pass


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    async with postgres_database(migrated=True) as url:
        yield url


@pytest.mark.postgres
async def test_cluster_nodes_and_a_sole_server_exclude_each_other(
    postgres_url: str, tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    database_url = postgres_url
    node = await started(server_processes, database_url, tmp_path / "n", PARLEY_CLUSTER="1")
    assert REFUSED in refused_serving(database_url, tmp_path)
    # Another node, and a migration, go beside it.
    other = await started(server_processes, database_url, tmp_path / "m", PARLEY_CLUSTER="1")
    assert parley(database_url, tmp_path, "migrate").returncode == 0
    node.stop()
    other.stop()

    await started(server_processes, database_url, tmp_path / "s")
    assert REFUSED in refused_serving(database_url, tmp_path, PARLEY_CLUSTER="1")


async def claim_backends(connection: asyncpg.Connection, pid: int) -> list[int]:
    """The database sessions that hold the claim for the server process ``pid``."""
    rows = await connection.fetch(
        "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database() "
        "AND (l.classid::bigint << 32) + l.objid::bigint = $1 AND a.application_name LIKE $2",
        ADVISORY_KEY,
        f"parley pid {pid} on %",
    )
    return [row["pid"] for row in rows]


async def wait_for_claim(connection: asyncpg.Connection, pid: int) -> list[int]:
    async with asyncio.timeout(30):
        for _ in range(100_000):  # bounded by the time-out
            if backends := await claim_backends(connection, pid):
                return backends
            await asyncio.sleep(0.05)
    raise AssertionError("unreachable")


@pytest.mark.postgres
async def test_a_dropped_claim_is_taken_again_or_the_server_stops(
    postgres_url: str, tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    """(SQLite's claim, a lock of the kernel, drops with the process only.)"""
    database_url = postgres_url
    first = await started(server_processes, database_url, tmp_path / "a")
    assert first.process is not None
    pid = first.process.pid
    url = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    connection = await asyncpg.connect(url)
    try:
        # The claim's connection ends: the server takes the claim again on a new one.
        (backend,) = await wait_for_claim(connection, pid)
        await connection.execute("SELECT pg_terminate_backend($1)", backend)
        async with asyncio.timeout(30):
            for _ in range(100_000):  # bounded by the time-out
                again = await claim_backends(connection, pid)
                if again not in ([], [backend]):
                    break
                await asyncio.sleep(0.05)
        assert len(again) == 1 and again != [backend]
        assert REFUSED in refused_serving(database_url, tmp_path)

        # It ends again, and another process takes the claim first: the server stops.
        await connection.execute("SELECT pg_terminate_backend($1)", again[0])
        await connection.execute("SELECT pg_advisory_lock($1)", ADVISORY_KEY)
        assert await asyncio.to_thread(first.process.wait, 30) == EXIT_CLAIM_LOST
        assert "took this server's database claim" in first.log.read_text()
        assert not process_running(pid)
    finally:
        await connection.close()
