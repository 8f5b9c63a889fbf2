"""Confused-deputy scenarios on a room over the real SQLite and PostgreSQL store, with the
REST handlers: a run acts only with its issuer's rights.

The model is a scripted fake (tests/fake_model.py) reached over mock HTTP by the real
provider, recording every request; the rooms, the store and the REST handlers (behind the
door's token and capability check) are the real ones, with no app and no socket.
A tool the issuer lacks and a prompt whose author was demoted while it waited are tested in
a room on the in-memory store: ``tests/server/runtime/test_confused_deputy.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from parley.server.http import access as access_api
from parley.server.http.resource_models import DocumentCreate, ReadersIn
from parley.session.commands import PromptCommand
from parley.session.errors import Forbidden
from tests.fake_model import NAME, Answer, FakeModel, Sent, call
from tests.server.runtime.backend import Backend, backend, sql_store
from tests.server.runtime.harness import memory_settings, stored_transcript

SECRET_TEXT = "The launch code is 7731"


def script(sent: Sent) -> Answer:
    asked = sent.asked_text()
    if "launch" in asked or "document" in asked:
        return [call("search_documents", {"query": "launch code"})]
    if "deploy" in asked:
        return [call("deploy", {"target": "prod"})]
    return ["nothing to add"]


async def audit(b: Backend, sid: str, **filters: Any) -> list[dict[str, Any]]:
    listed = await b.call(access_api.list_audit, session_id=sid, limit=100, after=0, **filters)
    return list(json.loads(listed.body)["records"])


def shared_text(entries: list[dict[str, Any]]) -> str:
    return "\n".join(str(e["content"]) for e in entries)


async def test_a_document_bob_read_never_reaches_alices_model_input(database_url: str) -> None:
    provider = FakeModel(script)
    async with (
        sql_store(database_url) as store,
        backend(memory_settings(), store=store, model=provider) as b,
    ):
        await deputy(b, provider)


async def deputy(b: Backend, provider: FakeModel) -> None:
    """Bob reads a restricted document through his run; alice asks about it next."""
    sid = await b.new_session({"alice": "editor", "bob": "editor"})
    made = await b.call(
        access_api.create_document,
        session_id=sid,
        body=DocumentCreate(
            title="Vault", text=f"{SECRET_TEXT}.", readers=ReadersIn(users=["bob"])
        ),
    )
    document_id = made.id
    s = await b.session(sid)

    bob_ack = await s.send("bob", PromptCommand("b", "what is the launch code?"))
    await s.settled(bob_ack["prompt_id"])
    # Bob's run found the passage and answered with it.
    bob_calls = provider.requests_for("bob")
    assert [m["role"] for m in bob_calls[-1].messages][-2:] == ["assistant", "tool"]
    assert SECRET_TEXT in bob_calls[-1].messages[-1]["content"]
    assert bob_calls[0].tools == ["search_documents"]

    alice_ack = await s.send("alice", PromptCommand("a", "what did the document say?"))
    await s.settled(alice_ack["prompt_id"])
    alice_calls = provider.requests_for("alice")
    assert alice_calls, "alice's prompt reached the model"
    for request in alice_calls:
        assert "7731" not in request.everything()
    # Her own search ran within her scope: nothing she may not read.
    assert "No passage" in alice_calls[-1].messages[-1]["content"]

    # The shared document never carried it either: not in the room's document, not in what
    # it broadcast to the members' sockets, not in what the store keeps.
    entries = [e.to_json() for e in s.room.doc.entries()]
    for copy in (entries, s.watcher.transcript(), await stored_transcript(s.store, sid)):
        assert "7731" not in shared_text(copy)
    steps = [e for e in entries if e["kind"] == "tool"]
    assert len(steps) == 2 and "[details restricted]" in steps[0]["content"]

    # The audit shows bob's items withheld from alice's call, and why.
    bob_reply = next(e for e in entries if e["kind"] == "reply" and e["author"] == NAME)
    records = await audit(b, sid, kind="model_call", actor="alice")
    withheld = {w["entry_id"]: w["reason"] for w in records[0]["data"]["context_withheld"]}
    assert bob_reply["id"] in withheld and steps[0]["id"] in withheld
    assert document_id in withheld[bob_reply["id"]]
    assert bob_reply["id"] not in records[0]["data"]["context_included"]
    assert records[0]["data"]["tools_offered"] == ["search_documents"]

    # The full reply is server-side: bob may read it over REST, alice may not.
    private = {"session_id": sid, "entry_id": bob_reply["id"]}
    got = await b.call(access_api.get_private, await b.member(sid, "bob"), **private)
    assert SECRET_TEXT in json.loads(got.body)["text"]
    with pytest.raises(Forbidden) as refused:
        await b.call(access_api.get_private, await b.member(sid, "alice"), **private)
    assert refused.value.http_status == 403
