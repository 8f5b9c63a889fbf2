"""Storage trouble, seen from outside: a SQLite write lock held by another process, a
PostgreSQL database that stops taking connections, a database that is not there yet
when ``parley serve`` starts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import websockets

from parley.server.store.transaction import StoreTx
from tests.conftest import (
    ADMIN_KEY,
    POSTGRES_URL,
    RunningServer,
    ServerProcess,
    free_port,
    make_settings,
    postgres_database,
    serve_in_process,
    sqlite_url,
)
from tests.yclient import YClient, all_replies_settled

HOLDER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.readline()
connection.execute("COMMIT")
print("released", flush=True)
"""


@contextlib.asynccontextmanager
async def write_lock_held(database: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """Another process holds SQLite's write lock on ``database`` (``BEGIN IMMEDIATE``)
    until ``release`` is called on what this yields, or the block ends."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        str(database),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None
    try:
        async with asyncio.timeout(20):
            assert await holder.stdout.readline() == b"held\n"
        yield holder
    finally:
        await release(holder)


async def release(holder: asyncio.subprocess.Process) -> None:
    if holder.returncode is None and holder.stdin is not None and not holder.stdin.is_closing():
        holder.stdin.write(b"go\n")
        holder.stdin.close()
    async with asyncio.timeout(20):
        await holder.wait()


def _prompt(n: int) -> dict[str, str]:
    return {"type": "prompt", "id": f"p{n}", "text": f"prompt {n}"}


async def test_a_held_sqlite_lock_does_not_stop_the_server(tmp_path: Path) -> None:
    """A write waiting for another process's lock waits off the event loop: probes,
    reads and other sockets go on meanwhile, and the write is stored once the lock is
    free (its budget here is longer than the test)."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d", db_lock_timeout_s=120)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        elsewhere = await server.new_session({"bob": "editor"})
        alice = await server.connect(sid, "alice")
        bob = await server.connect(elsewhere, "bob")
        note = await bob.command({"type": "message", "id": "m", "text": "note"})
        first = await alice.command(_prompt(1))
        await alice.wait_until(lambda c: all_replies_settled(c, 1))
        bob_token = await server.token(elsewhere, "bob")  # issuing one is a write
        async with write_lock_held(tmp_path / "parley.db") as holder:
            waiting = asyncio.create_task(alice.command(_prompt(2), timeout=120))
            # Answered while that write waits for the lock: these would wait behind it
            # if SQLite waited on the loop's thread.
            assert (await server.http.get("/readyz")).status_code == 200
            transcript = await server.http.get(f"/api/v1/sessions/{sid}/transcript")
            assert transcript.status_code == 200
            assert first["prompt_id"] in {m["id"] for m in transcript.json()["messages"]}
            again = await YClient.connect(server.ws_url, elsewhere, bob_token)
            server.clients.append(again)  # another session's socket
            await again.wait_until(lambda c: note["message_id"] in {e["id"] for e in c.entries()})
            assert not waiting.done()
            await release(holder)
        second = await waiting
        assert second["type"] == "ack" and second["seq"] == 2
        await alice.wait_until(lambda c: all_replies_settled(c, 2))
        ids = {m["id"] for m in await server.transcript(sid)}
        assert {first["prompt_id"], second["prompt_id"]} <= ids


async def test_a_write_refused_for_a_held_lock_is_unavailable_logged_and_on_readyz(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Past its budget a write is refused with ``unavailable`` (nothing stored, the
    socket stays open), the refusal is logged, ``/readyz`` answers 503 until a write
    goes through again, and nothing acknowledged is lost."""
    caplog.set_level(logging.WARNING, logger="parley.storage")
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", db_lock_timeout_s=0.2, storage_log_every_s=600
    )
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        alice = await server.connect(sid, "alice")
        acked = [await alice.command(_prompt(1))]
        await alice.wait_until(lambda c: all_replies_settled(c, 1))
        assert (await server.http.get("/readyz")).status_code == 200
        async with write_lock_held(tmp_path / "parley.db") as holder:
            refused = [await alice.command(_prompt(n)) for n in (2, 3, 4)]
            assert all(r["type"] == "error" and r["code"] == "unavailable" for r in refused)
            ready = await server.http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"]["code"] == "unavailable"
            assert (await server.http.get(f"/api/v1/sessions/{sid}/transcript")).status_code == 200
            # Over REST too, with when to come back (review: a REST 503 had no Retry-After).
            posted = await server.http.put(f"/api/v1/sessions/{sid}/facts/k", json={"value": "v"})
            assert posted.status_code == 503 and posted.headers["Retry-After"] == "2"
            assert posted.json()["error"]["code"] == "unavailable"
            metrics = (await server.http.get("/metrics")).text
            assert 'parley_storage_refusals_total{kind="locked"}' in metrics
            await release(holder)
        assert (await server.http.get("/readyz")).status_code == 200
        acked.append(await alice.command(_prompt(2)))  # the same id: it was never stored
        assert acked[-1]["type"] == "ack" and acked[-1]["seq"] == 2
        await alice.wait_until(lambda c: all_replies_settled(c, 2))
    refusals = [r for r in caplog.records if r.getMessage() == "database write refused"]
    assert refusals and getattr(refusals[0], "kind", None) == "locked"
    # Three refused commands, one line: the rest are counted, not written.
    assert len(refusals) < 3
    ids = {e["id"] for e in alice.entries()}
    assert {a["prompt_id"] for a in acked} <= ids


@contextlib.contextmanager
def read_only(*files: Path) -> Iterator[None]:
    """``files`` may not be written (``chattr +i``: even through descriptors already
    open, and even for root), as on a disk remounted read-only."""
    try:
        subprocess.run(["chattr", "+i", *map(str, files)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"needs chattr +i (root on ext4 or the like): {exc}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, files)], check=True)


async def test_a_read_only_sqlite_database_turns_readyz_503_until_writes_succeed(
    tmp_path: Path,
) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        alice = await server.connect(sid, "alice")
        acked = [await alice.command(_prompt(1))]
        await alice.wait_until(lambda c: all_replies_settled(c, 1))
        with read_only(tmp_path / "parley.db", tmp_path / "parley.db-wal"):
            refused = await alice.command(_prompt(2))
            assert refused["type"] == "error" and refused["code"] == "unavailable"
            assert (await server.http.get("/readyz")).status_code == 503
            assert (await server.http.get(f"/api/v1/sessions/{sid}/transcript")).status_code == 200
        assert (await server.http.get("/readyz")).status_code == 200
        acked.append(await alice.command(_prompt(2)))
        assert acked[-1]["type"] == "ack" and acked[-1]["seq"] == 2
        await alice.wait_until(lambda c: all_replies_settled(c, 2))
        assert {a["prompt_id"] for a in acked} <= {e["id"] for e in alice.entries()}


# -- PostgreSQL: the database stops taking connections (the shared server keeps running) ---


async def _allow_connections(url: str, allowed: bool) -> None:
    name = url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def outage(url: str) -> AsyncIterator[None]:
    await _allow_connections(url, False)
    try:
        yield
    finally:
        await _allow_connections(url, True)


async def _ready(server: RunningServer) -> None:
    for _ in range(300):
        if (await server.http.get("/readyz")).status_code == 200:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("/readyz did not come back")


@pytest.mark.postgres
async def test_postgres_outage_answers_unavailable_and_clients_are_told_to_wait(
    tmp_path: Path,
) -> None:
    async with postgres_database(migrated=True) as url:
        settings = make_settings(url, tmp_path / "d", db_retry_after_s=3, room_idle_unload_s=0.5)
        async with serve_in_process(settings) as server:
            sid = await server.new_session({"alice": "editor"})
            other = await server.new_session({"alice": "editor"})
            alice = await server.connect(sid, "alice")
            acked = [await alice.command(_prompt(1))]
            await alice.wait_until(lambda c: all_replies_settled(c, 1))
            tokens = {s: await server.token(s, "alice") for s in (sid, other)}
            rooms = server.app.state.parley.rooms
            for _ in range(300):  # nobody uses it: unloaded, to load again
                if rooms.loaded(other) is None:
                    break
                await asyncio.sleep(0.1)
            assert rooms.loaded(other) is None
            async with outage(url):
                # An open socket: the command is answered, and the socket stays.
                during = await alice.command(_prompt(2))
                assert during["type"] == "error" and during["code"] == "unavailable"
                assert (await server.http.get("/readyz")).status_code == 503
                # A session that cannot be loaded: the upgrade is refused with a hint,
                # not accepted and closed (which resets a stock client's back-off).
                with pytest.raises(websockets.InvalidStatus) as refused:
                    await YClient.connect(server.ws_url, other, tokens[other])
                response = refused.value.response
                assert response.status_code == 503
                assert response.headers["Retry-After"] == "3"
                assert json.loads(response.body)["error"]["code"] == "unavailable"
            await _ready(server)
            acked.append(await alice.command(_prompt(2)))
            assert acked[-1]["type"] == "ack" and acked[-1]["seq"] == 2
            await alice.wait_until(lambda c: all_replies_settled(c, 2), timeout=30)
            late = await server.connect(other, "alice")
            assert (await late.command({"type": "message", "id": "m", "text": "hi"}))["seq"] == 1
            assert {a["prompt_id"] for a in acked} <= {e["id"] for e in alice.entries()}


@pytest.mark.postgres
async def test_a_command_whose_connection_drops_as_the_outage_starts_keeps_the_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outage begins between the document taking a command and its one statement (an
    acked command's write on PostgreSQL): the statement goes out on a connection the
    server already dropped, and the store cannot be read to undo the change. The member is
    answered ``unavailable`` and nobody's socket closes; after the outage the command is
    not in the session, and the next one takes its number."""
    async with postgres_database(migrated=True) as url:
        settings = make_settings(url, tmp_path / "d", db_retry_after_s=3)
        async with serve_in_process(settings) as server:
            sid = await server.new_session({"alice": "editor", "bob": "viewer"})
            alice = await server.connect(sid, "alice")
            bob = await server.connect(sid, "bob")
            first = await alice.command({"type": "message", "id": "m1", "text": "one"})
            run = StoreTx._run
            dropping = []

            async def drop_first(tx: StoreTx, statement: Any, parameters: Any, alone: Any = None):
                if alone is not None and not dropping:
                    dropping.append(True)
                    await _allow_connections(url, False)  # this connection's backend too
                return await run(tx, statement, parameters, alone)

            monkeypatch.setattr(StoreTx, "_run", drop_first)
            try:
                refused = await alice.command({"type": "message", "id": "m2", "text": "two"})
                assert dropping, "the command was not written as one statement"
                assert refused["type"] == "error" and refused["code"] == "unavailable", refused
            finally:
                await _allow_connections(url, True)
            await _ready(server)
            after = await alice.command({"type": "message", "id": "m3", "text": "three"})
            assert after["type"] == "ack" and after["seq"] == first["seq"] + 1, after
            for client in (alice, bob):
                await client.wait_until(lambda c: "three" in [e["content"] for e in c.entries()])
                assert [e["content"] for e in client.entries()] == ["one", "three"]
                assert client.ws.close_code is None
            late = await server.connect(sid, "bob")
            assert [e["content"] for e in late.entries()] == ["one", "three"]


@pytest.mark.postgres
async def test_postgres_outage_under_a_streaming_reply_closes_with_a_retry_hint(
    tmp_path: Path,
) -> None:
    """A reply's text cannot be stored: its session is given up; its sockets close with
    1013 and a JSON reason carrying ``retry_after_ms``; reconnecting is refused (503)
    until the database is back; then the session loads again with every acked prompt, the
    one cut off marked ``storage_error`` (even though the first reload failed too)."""
    async with postgres_database(migrated=True) as url:
        settings = make_settings(url, tmp_path / "d", offline_token_delay_ms=100)
        async with serve_in_process(settings) as server:
            sid = await server.new_session({"alice": "editor"})
            alice = await server.connect(sid, "alice")
            token = await server.token(sid, "alice")
            acked = await alice.command(_prompt(1))
            await alice.wait_until(
                lambda c: any(e["kind"] == "reply" and e["content"] for e in c.entries())
            )
            async with outage(url):
                assert await alice.wait_closed(timeout=30) == 1013
                reason = json.loads(alice.ws.close_reason or "")
                assert reason["code"] == "unavailable"
                assert reason["retry_after_ms"] == round(settings.db_retry_after_s * 1000)
                with pytest.raises(websockets.InvalidStatus) as refused:
                    await YClient.connect(server.ws_url, sid, token)
                assert refused.value.response.status_code == 503
                assert "Retry-After" in refused.value.response.headers
            await _ready(server)
            back = await server.connect(sid, "alice")
            cut = next(e for e in back.entries() if e["id"] == acked["prompt_id"])
            assert (cut["status"], cut["reason_code"]) == ("failed", "storage_error"), cut
            reply = next(e for e in back.entries() if e["id"] == cut["reply_id"])
            assert (reply["status"], reply["reason_code"]) == ("interrupted", "storage_error")
            after = await back.command(_prompt(2))
            assert after["type"] == "ack"
            await back.wait_until(lambda c: all_replies_settled(c, 2), timeout=30)


# -- start-up: the database comes after the server ------------------------------------------


@pytest.mark.postgres
async def test_serve_waits_for_a_database_that_comes_later(
    tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    async with postgres_database():  # skips without PostgreSQL
        pass
    name = f"parley_test_{uuid.uuid4().hex[:12]}"
    base = POSTGRES_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    node = ServerProcess(f"{base}/{name}", tmp_path / "d", free_port(), PARLEY_LOG_FORMAT="json")
    server_processes.append(node)
    node.spawn()
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        async with asyncio.timeout(60):  # it says it waits (and has not exited)
            while "database unreachable; retrying" not in node.log.read_text():
                assert node.process is not None and node.process.poll() is None
                await asyncio.sleep(0.1)
        await admin.execute(f'CREATE DATABASE "{name}"')
        async with httpx.AsyncClient(
            base_url=node.base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ) as http:
            async with asyncio.timeout(60):
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get("/readyz")).status_code == 200:
                            break
                    assert node.process is not None and node.process.poll() is None
                    await asyncio.sleep(0.2)
            assert (await http.post("/api/v1/sessions", json={})).status_code == 201
        tries = [
            json.loads(line)
            for line in node.log.read_text().splitlines()
            if line.startswith("{") and "database unreachable" in line
        ]
        assert tries and all("error" in t and "retry_in_s" in t for t in tries)
    finally:
        node.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_a_write_behind_another_clients_postgresql_lock_is_refused_in_its_budget(
    tmp_path: Path,
) -> None:
    """Review (faults): on PostgreSQL a write waited as long as another client of the
    database held a lock it needed (25 s), then answered. It now waits
    ``PARLEY_DB_LOCK_TIMEOUT_S``, as on SQLite, and is refused ``unavailable`` with nothing
    stored; once the lock is gone it goes through."""
    async with postgres_database(migrated=True) as url:
        settings = make_settings(url, tmp_path / "d", db_lock_timeout_s=0.3)
        async with serve_in_process(settings) as server:
            sid = await server.new_session({"alice": "editor"})
            alice = await server.connect(sid, "alice")
            holder = await asyncpg.connect(url.replace("+asyncpg", ""))
            try:
                locked = holder.transaction()
                await locked.start()
                await holder.execute("LOCK TABLE entries IN EXCLUSIVE MODE")
                refused = await alice.command({"type": "message", "id": "m", "text": "hi"})
                assert (refused["type"], refused["code"]) == ("error", "unavailable"), refused
                await locked.rollback()
            finally:
                await holder.close()
            stored = await alice.command({"type": "message", "id": "m", "text": "hi"})
            assert (stored["type"], stored["seq"]) == ("ack", 1)


async def test_an_invite_exchange_under_a_held_lock_is_a_documented_503(tmp_path: Path) -> None:
    """Review RY-1: the exchange (no key, but it writes) answered ``503 unavailable`` with
    ``Retry-After`` while another process held SQLite's write lock, and its operation in
    the document listed no 503 (an SDK made from it had no type for the answer). The invite
    stays usable once the lock is gone."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d", db_lock_timeout_s=0.2)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"bob": "editor"})
        made = await server.http.post(f"/api/v1/sessions/{sid}/invites", json={"user_id": "bob"})
        assert made.status_code == 201, made.text
        document = (await server.http.get("/api/v1/openapi.json")).json()
        listed = document["paths"]["/api/v1/invites/exchange"]["post"]["responses"]
        body = {"invite": made.json()["secret"]}
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as anonymous:
            async with write_lock_held(tmp_path / "parley.db"):
                refused = await anonymous.post("/api/v1/invites/exchange", json=body)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "unavailable"
            assert refused.headers["Retry-After"] == "2"
            assert "503" in listed
            exchanged = await anonymous.post("/api/v1/invites/exchange", json=body)
            assert exchanged.status_code == 200, exchanged.text
