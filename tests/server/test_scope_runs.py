"""Redefining a role over REST applies at once to the sockets of its members. (Run scopes
and restricted items across a reload are tested on a room over the in-memory store:
``tests/server/runtime/test_scope_runs.py``.)"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import make_settings, serve_in_process, sqlite_url
from tests.fake_model import Answer, FakeModel, Sent, call

SECRET = "the vault code is 7731"


def script(sent: Sent) -> Answer:
    if "vault" in sent.asked_text() and "[wait]" not in sent.asked_text():
        return [call("search_documents", {"query": "vault code"})]
    return ["ok"]


async def test_redefining_a_role_applies_at_once(tmp_path: Path) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings, FakeModel(script)) as server:
        await server.http.put(
            "/api/v1/roles/support", json={"capabilities": ["read_session", "prompt"]}
        )
        sid = await server.new_session({"sam": "support"})
        sam = await server.connect(sid, "sam")
        ok = await sam.command({"type": "prompt", "id": "1", "text": "hello"})
        assert ok["type"] == "ack"
        await server.http.put("/api/v1/roles/support", json={"capabilities": ["read_session"]})
        denied = await sam.command({"type": "prompt", "id": "2", "text": "again"})
        assert denied["code"] == "forbidden"
        members = (await server.http.get(f"/api/v1/sessions/{sid}/members")).json()["members"]
        assert members[0]["capabilities"] == ["read_session"]
        held = await server.http.delete("/api/v1/roles/support")
        assert held.status_code == 409  # sam still holds it
        await server.http.put("/api/v1/roles/support", json={"capabilities": []})
        assert await sam.wait_closed() == 4403  # may no longer read the session
