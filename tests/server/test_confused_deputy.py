"""Confused-deputy scenarios over real WebSockets: a run acts only with its issuer's rights.

The model is a scripted fake (tests/fake_model.py) reached over mock HTTP by the real
provider, recording every request; everything else is the real server, on SQLite and PostgreSQL.
A tool the issuer lacks and a prompt whose author was demoted while it waited are tested in
a room on the in-memory store: ``tests/server/runtime/test_confused_deputy.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer, make_settings, serve_in_process
from tests.fake_model import NAME, Answer, FakeModel, Sent, call
from tests.yclient import YClient, all_replies_settled

SECRET_TEXT = "The launch code is 7731"


def script(sent: Sent) -> Answer:
    asked = sent.asked_text()
    if "launch" in asked or "document" in asked:
        return [call("search_documents", {"query": "launch code"})]
    if "deploy" in asked:
        return [call("deploy", {"target": "prod"})]
    return ["nothing to add"]


@pytest.fixture
async def deputy(
    database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[RunningServer, FakeModel]]:
    provider = FakeModel(script)
    settings = make_settings(database_url, tmp_path / "d")
    async with serve_in_process(settings, provider) as server:
        yield server, provider


async def audit(server: RunningServer, sid: str, **filters: str) -> list[dict[str, Any]]:
    response = await server.http.get(f"/api/v1/sessions/{sid}/audit", params=filters)
    assert response.status_code == 200, response.text
    records: list[dict[str, Any]] = response.json()["records"]
    return records


def shared_text(client: YClient) -> str:
    return "\n".join(str(e["content"]) for e in client.entries())


async def test_a_document_bob_read_never_reaches_alices_model_input(
    deputy: tuple[RunningServer, FakeModel],
) -> None:
    server, provider = deputy
    sid = await server.new_session({"alice": "editor", "bob": "editor"})
    made = await server.http.post(
        f"/api/v1/sessions/{sid}/documents",
        json={"title": "Vault", "text": f"{SECRET_TEXT}.", "readers": {"users": ["bob"]}},
    )
    assert made.status_code == 201, made.text
    document_id = made.json()["id"]
    bob = await server.connect(sid, "bob")
    alice = await server.connect(sid, "alice")

    await bob.command({"type": "prompt", "id": "b", "text": "what is the launch code?"})
    await bob.wait_until(lambda c: all_replies_settled(c, 1))
    # Bob's run found the passage and answered with it.
    bob_calls = provider.requests_for("bob")
    assert [m["role"] for m in bob_calls[-1].messages][-2:] == ["assistant", "tool"]
    assert SECRET_TEXT in bob_calls[-1].messages[-1]["content"]
    assert bob_calls[0].tools == ["search_documents"]

    await alice.command({"type": "prompt", "id": "a", "text": "what did the document say?"})
    await alice.wait_until(lambda c: all_replies_settled(c, 2))
    alice_calls = provider.requests_for("alice")
    assert alice_calls, "alice's prompt reached the model"
    for request in alice_calls:
        assert "7731" not in request.everything()
    # Her own search ran within her scope: nothing she may not read.
    assert "No passage" in alice_calls[-1].messages[-1]["content"]

    # The shared document never carried it either: placeholders for alice (and bob).
    for client in (alice, bob):
        assert "7731" not in shared_text(client)
    steps = [e for e in alice.entries() if e["kind"] == "tool"]
    assert len(steps) == 2 and "[details restricted]" in steps[0]["content"]

    # The audit shows bob's items withheld from alice's call, and why.
    bob_reply = next(e for e in bob.entries() if e["kind"] == "reply" and e["author"] == NAME)
    records = await audit(server, sid, kind="model_call", actor="alice")
    withheld = {w["entry_id"]: w["reason"] for w in records[0]["data"]["context_withheld"]}
    assert bob_reply["id"] in withheld and steps[0]["id"] in withheld
    assert document_id in withheld[bob_reply["id"]]
    assert bob_reply["id"] not in records[0]["data"]["context_included"]
    assert records[0]["data"]["tools_offered"] == ["search_documents"]

    # The full reply is server-side: bob may read it over REST, alice may not.
    url = f"/api/v1/sessions/{sid}/entries/{bob_reply['id']}/private"
    for user, status in (("bob", 200), ("alice", 403)):
        token = await server.token(sid, user)
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            got = await http.get(url, headers={"Authorization": f"Bearer {token}"})
        assert got.status_code == status, got.text
        if status == 200:
            assert SECRET_TEXT in got.json()["text"]
