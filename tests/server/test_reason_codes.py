"""Why a run ended reaches everyone as a code of its own cause (``session/reasons.py``)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from tests.conftest import POSTGRES_URL, make_settings, postgres_database, serve_in_process
from tests.yclient import YClient


async def _set_connections(database: str, allowed: bool) -> None:
    """Let clients into ``database`` or keep them out (and end the ones inside): a
    PostgreSQL outage for this database only, with the shared server left running."""
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
    finally:
        await admin.close()


def _prompt(client: YClient, prompt_id: str) -> dict[str, object] | None:
    return next((e for e in client.entries() if e["id"] == prompt_id), None)


@pytest.mark.postgres
async def test_a_database_outage_under_a_streaming_reply_is_a_storage_error(
    tmp_path: Path,
) -> None:
    async with postgres_database() as url:
        database = url.rsplit("/", 1)[1]
        settings = make_settings(url, tmp_path / "data", offline_token_delay_ms=150.0)
        async with serve_in_process(settings) as server:
            sid = await server.new_session({"alice": "editor"})
            alice = await server.connect(sid, "alice")
            ack = await alice.command({"type": "prompt", "id": "c1", "text": "tell me a story"})
            prompt_id = str(ack["prompt_id"])

            def streaming(c: YClient) -> bool:
                return any(
                    e["kind"] == "reply" and e["status"] == "streaming" and e["content"]
                    for e in c.entries()
                )

            await alice.wait_until(streaming, timeout=30)
            await _set_connections(database, allowed=False)
            try:
                # The room gives up (its next write fails) and tells its sockets to come back.
                assert await alice.wait_closed(timeout=60) == 1013
            finally:
                await _set_connections(database, allowed=True)
            # Reconnecting loads the session again, and the cut-off run is marked.
            again = await server.connect(sid, "alice")

            def settled(c: YClient) -> bool:
                entry = _prompt(c, prompt_id)
                return entry is not None and entry["status"] == "failed"

            await again.wait_until(settled, timeout=60)
            prompt = _prompt(again, prompt_id)
            assert prompt is not None and prompt["reason_code"] == "storage_error", prompt
            reply = next(e for e in again.entries() if e["id"] == prompt["reply_id"])
            assert (reply["status"], reply["reason_code"]) == ("interrupted", "storage_error")
            rows = await server.transcript(sid)
            stored = next(e for e in rows if e["id"] == prompt_id)
            assert (stored["status"], stored["reason_code"]) == ("failed", "storage_error")
            # Nothing was lost: a new prompt is answered.
            await again.command({"type": "prompt", "id": "c2", "text": "still there?"})
            await again.wait_until(
                lambda c: (
                    sum(e["kind"] == "reply" and e["status"] == "done" for e in c.entries()) == 1
                ),
                timeout=60,
            )
