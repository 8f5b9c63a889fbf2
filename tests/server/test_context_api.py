"""Pins, facts and the context preview over real sockets and HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pycrdt import Array, Map

from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.fake_model import Answer, FakeModel, Sent
from tests.yclient import all_replies_settled


def first_call_waits(gate: asyncio.Event) -> FakeModel:
    """A model whose first call waits for ``gate`` (or a cancel); call n answers "answer n"."""

    def script(sent: Sent) -> Answer:
        n = len(model.requests)
        return [gate, f"answer {n}"] if n == 1 else [f"answer {n}"]

    model = FakeModel(script)
    return model


async def test_pins_and_facts_over_rest(tmp_path: Path) -> None:
    """The REST routes of facts and pins; a fact set by the admin reaches the model input.
    (Pins and facts set by commands: ``tests/server/runtime/test_context.py``.)"""
    gate = asyncio.Event()
    gate.set()
    provider = first_call_waits(gate)
    url = sqlite_url(tmp_path)
    async with serve_in_process(make_settings(url, tmp_path / "d"), provider) as server:
        sid = await server.new_session({"alice": "editor", "vera": "viewer"})
        alice = await server.connect(sid, "alice")
        vera = await server.connect(sid, "vera")
        posted = await alice.command({"type": "message", "id": "m", "text": "acct is 7731"})
        await alice.command({"type": "pin", "id": "p", "entry_id": posted["message_id"]})
        await alice.command({"type": "set_fact", "id": "f", "key": "region", "value": "eu-west-1"})
        await vera.wait_until(lambda c: len(c.doc.get("pins", type=Array)) == 1)
        assert vera.doc.get("facts", type=Map).to_py() == {"region": "eu-west-1"}

        facts = await server.http.get(f"/api/v1/sessions/{sid}/facts")
        assert facts.json() == {"facts": {"region": "eu-west-1"}}
        put = await server.http.put(f"/api/v1/sessions/{sid}/facts/tier", json={"value": "gold"})
        assert put.status_code == 200
        pins = await server.http.get(f"/api/v1/sessions/{sid}/pins")
        assert pins.json() == {"pins": [posted["message_id"]]}

        await alice.command({"type": "prompt", "id": "q", "text": "what is my account?"})
        await alice.wait_until(lambda c: all_replies_settled(c, 1))
        system = provider.requests[0].system
        assert '  tier = "gold" (set over the admin API)' in system.split("\n")

        gone = await server.http.delete(f"/api/v1/sessions/{sid}/facts/tier")
        assert gone.status_code == 204
        assert (await server.http.delete(f"/api/v1/sessions/{sid}/facts/tier")).status_code == 404
        unpinned = await server.http.delete(f"/api/v1/sessions/{sid}/pins/{posted['message_id']}")
        assert unpinned.status_code == 204


async def test_the_preview_is_what_the_model_receives(tmp_path: Path) -> None:
    gate = asyncio.Event()
    provider = first_call_waits(gate)
    url = sqlite_url(tmp_path)
    async with serve_in_process(make_settings(url, tmp_path / "d"), provider) as server:
        sid = await server.new_session({"alice": "editor", "bob": "editor", "olga": "owner"})
        alice = await server.connect(sid, "alice")
        bob = await server.connect(sid, "bob")
        olga = await server.connect(sid, "olga")
        log = "\n".join(f"line {i}: worker crashed with exit code 137" for i in range(6))
        await alice.command({"type": "message", "id": "1", "text": f"log:\n\n{log}"})
        await olga.command({"type": "message", "id": "2", "text": f"mine too\n\n{log}"})
        await alice.command({"type": "message", "id": "3", "text": "Is prod down?"})
        await olga.command({"type": "message", "id": "4", "text": "is PROD down?"})
        first = await alice.command({"type": "prompt", "id": "5", "text": "blocked run"})
        for _ in range(100):
            if provider.requests:
                break
            await asyncio.sleep(0.02)
        waiting = await bob.command({"type": "prompt", "id": "6", "text": "what happened?"})

        preview = (
            await server.http.get(f"/api/v1/sessions/{sid}/context", params={"user_id": "bob"})
        ).json()
        assert preview["prompt_ids"] == [waiting["prompt_id"]]
        contents = [m["content"] for m in preview["messages"]]
        assert "[alice and olga each wrote]\nis PROD down?" in contents
        # The log pasted twice is given once (as a folded near-duplicate or a block reference).
        assert sum(c.count("worker crashed") for c in contents) == 6
        assert preview["messages"][-1]["answering"]
        assert contents[-1] == "[bob asks you]\nwhat happened?"
        assert preview["tokens"] == preview["system_tokens"] + sum(
            m["tokens"] for m in preview["messages"]
        )
        prod = next(e["id"] for e in alice.entries() if e["content"] == "is PROD down?")
        assert f"duplicate of {prod}" in {x["reason"] for x in preview["excluded"]}

        # The blocked run is cancelled; bob's prompt starts with exactly the previewed input.
        await olga.command({"type": "cancel", "id": "c", "prompt_id": first["prompt_id"]})
        await bob.wait_until(lambda c: all_replies_settled(c, 2))
        sent = provider.requests[1]
        assert sent.system == preview["system"]
        assert [m["content"] for m in sent.messages] == contents
        # Who said each message: the attribution lines (in the contents) and the member in
        # each user message's ``name`` field.
        assert [(m["role"], m.get("name")) for m in sent.messages] == [
            (m["role"], m["author"] if m["role"] == "user" else None) for m in preview["messages"]
        ]

        nobody = await server.http.get(
            f"/api/v1/sessions/{sid}/context", params={"user_id": "mallory"}
        )
        assert nobody.status_code == 409
        history = (
            await server.http.get(f"/api/v1/sessions/{sid}/context", params={"user_id": "alice"})
        ).json()
        assert history["prompt_ids"] == [] and not any(m["answering"] for m in history["messages"])


async def test_preview_needs_a_user(sqlite_server: RunningServer) -> None:
    sid = await sqlite_server.new_session({"alice": "editor"})
    response = await sqlite_server.http.get(f"/api/v1/sessions/{sid}/context")
    assert response.status_code == 422
