"""Run scopes over real sockets: coalesced runs act with the rights all issuers share, the
server-side restricted items survive a restart, and redefining a role applies at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import make_settings, serve_in_process, sqlite_url
from tests.fake_model import Answer, FakeModel, Sent, call
from tests.yclient import all_replies_settled

SECRET = "the vault code is 7731"


def script(sent: Sent) -> Answer:
    if "vault" in sent.asked_text() and "[wait]" not in sent.asked_text():
        return [call("search_documents", {"query": "vault code"})]
    return ["ok"]


async def test_a_coalesced_run_acts_with_what_all_its_issuers_share(tmp_path: Path) -> None:
    provider = FakeModel(script)
    provider.gate = asyncio.Event()
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings, provider) as server:
        sid = await server.new_session({"olga": "owner", "alice": "editor"})
        await server.http.put(
            f"/api/v1/sessions/{sid}/members/bob",
            json={"role": "editor", "grants": ["tool:deploy"]},
        )
        await server.http.post(
            "/api/v1/tools",
            json={"name": "deploy", "description": "deploy", "url": "http://127.0.0.1:9/"},
        )
        await server.http.post(
            f"/api/v1/sessions/{sid}/documents",
            json={"title": "Vault", "text": SECRET, "readers": {"users": ["bob"]}},
        )
        await server.http.patch(f"/api/v1/sessions/{sid}", json={"policy": "coalesce"})
        bob = await server.connect(sid, "bob")
        alice = await server.connect(sid, "alice")
        olga = await server.connect(sid, "olga")
        await bob.command({"type": "prompt", "id": "b0", "text": "what is the vault code?"})
        await bob.wait_until(lambda c: all_replies_settled(c, 1))
        assert provider.requests_for("bob")[0].tools == [
            "search_documents",
            "deploy",
        ]
        await olga.command({"type": "prompt", "id": "o", "text": "[wait] hold on"})
        await olga.wait_until(lambda c: any(e["status"] == "running" for e in c.entries()))
        await bob.command({"type": "prompt", "id": "b1", "text": "and the vault again?"})
        await alice.command({"type": "prompt", "id": "a1", "text": "summarise please"})
        provider.gate.set()
        await alice.wait_until(lambda c: all_replies_settled(c, 3))

        together = [r for r in provider.requests if set(r.issuers) == {"bob", "alice"}]
        assert together, "one run answered bob and alice together"
        assert together[0].tools == ["search_documents"]  # not deploy
        for request in together:
            assert "7731" not in request.everything()  # alice may not read it
        records = (
            await server.http.get(f"/api/v1/sessions/{sid}/audit", params={"kind": "model_call"})
        ).json()["records"]
        shared = next(r for r in records if len(r["data"]["issuers"]) == 2)
        assert "tool:deploy" not in shared["data"]["capabilities"]
        assert shared["data"]["context_withheld"], "bob's first answer was withheld"


async def test_restricted_items_survive_a_restart(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    settings = make_settings(url, tmp_path / "d")
    provider = FakeModel(script)
    async with serve_in_process(settings, provider) as server:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        await server.http.post(
            f"/api/v1/sessions/{sid}/documents",
            json={"title": "Vault", "text": SECRET, "readers": {"users": ["bob"]}},
        )
        bob = await server.connect(sid, "bob")
        await bob.command({"type": "prompt", "id": "b", "text": "what is the vault code?"})
        await bob.wait_until(lambda c: all_replies_settled(c, 1))
        reply_id = next(e["id"] for e in bob.entries() if e["kind"] == "reply")
    provider = FakeModel(script)
    async with serve_in_process(settings, provider) as server:
        private = await server.http.get(f"/api/v1/sessions/{sid}/entries/{reply_id}/private")
        assert private.status_code == 200 and SECRET in private.json()["text"]
        alice = await server.connect(sid, "alice")
        await alice.command({"type": "prompt", "id": "a", "text": "what did bob learn?"})
        await alice.wait_until(lambda c: all_replies_settled(c, 2))
        [request] = provider.requests_for("alice")
        assert "7731" not in request.everything()
        preview = await server.http.get(
            f"/api/v1/sessions/{sid}/context", params={"user_id": "bob"}
        )
        assert SECRET in preview.text  # bob may read his own answer: the full text is given


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
