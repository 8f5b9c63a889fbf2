"""Pins and facts over real sockets and HTTP; the context preview through its REST handler
and its route's endpoint, on a room over the real SQLite store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pycrdt import Array, Map

from parley.server.http import access as access_api
from parley.server.http import context as context_api
from parley.server.http import members as members_api
from parley.server.http.models import MemberPut
from parley.server.http.resource_models import DocumentCreate, ReadersIn
from parley.server.runtime.context import SessionContext
from parley.session.commands import CancelCommand, MessageCommand, PromptCommand
from parley.session.errors import Conflict
from parley.session.queue import Policy
from parley.session.queue_root import ANSWERED_FIRST, RUNNING
from parley.session.tokens import count_tokens, framing_tokens
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.fake_model import Answer, FakeModel, Sent, call
from tests.server.runtime.backend import Backend, backend, sql_store
from tests.server.runtime.fold_steps import FoldSteps
from tests.server.runtime.harness import (
    SESSION,
    HeldAtCommit,
    MemorySession,
    add_members,
    memory_settings,
)
from tests.server.runtime.test_scope_runs import SECRET, script
from tests.yclient import all_replies_settled


def first_call_waits(gate: asyncio.Event, asked: asyncio.Event | None = None) -> FakeModel:
    """A model whose first call sets ``asked`` and waits for ``gate`` (or a cancel); call
    n answers "answer n"."""

    def script(sent: Sent) -> Answer:
        n = len(model.requests)
        if n == 1 and asked is not None:
            asked.set()
        return [gate, f"answer {n}"] if n == 1 else [f"answer {n}"]

    model = FakeModel(script)
    return model


@asynccontextmanager
async def first_call_held(
    tmp_path: Path,
) -> AsyncIterator[tuple[Backend, FakeModel, asyncio.Event, asyncio.Event]]:
    """A backend over the real SQLite store whose model's first call waits for ``gate``
    (``first_call_waits``), with the model, the gate and the event set as that call is made."""
    gate, asked = asyncio.Event(), asyncio.Event()
    provider = first_call_waits(gate, asked)
    async with (
        sql_store(sqlite_url(tmp_path)) as store,
        backend(memory_settings(), store=store, model=provider) as b,
    ):
        yield b, provider, gate, asked


async def prompts_behind_a_run_in_flight(
    b: Backend, sid: str, asked: asyncio.Event, prompts: list[tuple[str, str]], previewer: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each of ``prompts`` (member, text) sent, the first once its run's call is made
    (``first_call_waits``' ``asked``), the rest after; their acks and ``previewer``'s preview."""
    s = await b.session(sid)
    acks = [await s.send(prompts[0][0], PromptCommand("1", prompts[0][1]))]
    async with asyncio.timeout(10):
        await asked.wait()
    for n, (member, text) in enumerate(prompts[1:], start=2):
        acks.append(await s.send(member, PromptCommand(str(n), text)))
    preview = await b.call(context_api.preview_context, session_id=sid, user_id=previewer)
    return acks, json.loads(preview.body)


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
        for key in ("zone", "acct", "mid"):  # listed by key, not as set (review RI-2)
            put = await server.http.put(f"/api/v1/sessions/{sid}/facts/{key}", json={"value": "x"})
        ordered = ["acct", "mid", "region", "tier", "zone"]
        assert list(put.json()["facts"]) == ordered
        facts = await server.http.get(f"/api/v1/sessions/{sid}/facts")
        assert list(facts.json()["facts"]) == ordered
        pins = await server.http.get(f"/api/v1/sessions/{sid}/pins")
        assert pins.json() == {"pins": [posted["message_id"]]}

        await alice.command({"type": "prompt", "id": "q", "text": "what is my account?"})
        await alice.wait_until(lambda c: all_replies_settled(c, 1))
        system = provider.requests[0].system
        assert '  tier (set over the admin API) = "gold"' in system.split("\n")

        gone = await server.http.delete(f"/api/v1/sessions/{sid}/facts/tier")
        assert gone.status_code == 204
        # Removing what is not there is already as asked, as the socket's commands answer.
        assert (await server.http.delete(f"/api/v1/sessions/{sid}/facts/tier")).status_code == 204
        pin = f"/api/v1/sessions/{sid}/pins/{posted['message_id']}"
        assert (await server.http.delete(pin)).status_code == 204
        assert (await server.http.delete(pin)).status_code == 204
        assert (await server.http.get(f"/api/v1/sessions/{sid}/pins")).json() == {"pins": []}
        unknown = await server.http.delete(f"/api/v1/sessions/{sid}/pins/nope")
        refused = await alice.command({"type": "unpin", "id": "u", "entry_id": "nope"})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["message"] == refused["message"]
        assert refused["code"] == unknown.json()["error"]["code"] == "not_found"


async def test_the_preview_is_what_the_model_receives(tmp_path: Path) -> None:
    """The preview through its REST handler, on a room over the real SQLite store."""
    async with first_call_held(tmp_path) as (b, provider, _gate, asked):
        sid = await b.new_session({"alice": "editor", "bob": "editor", "olga": "owner"})
        s = await b.session(sid)
        log = "\n".join(f"line {i}: worker crashed with exit code 137" for i in range(6))
        await s.send("alice", MessageCommand("1", f"log:\n\n{log}"))
        await s.send("olga", MessageCommand("2", f"mine too\n\n{log}"))
        await s.send("alice", MessageCommand("3", "Is prod down?"))
        await s.send("olga", MessageCommand("4", "Is prod down?"))
        first = await s.send("alice", PromptCommand("5", "blocked run"))
        async with asyncio.timeout(10):
            await asked.wait()
        waiting = await s.send("bob", PromptCommand("6", "what happened?"))

        preview = json.loads(
            (await b.call(context_api.preview_context, session_id=sid, user_id="bob")).body
        )
        assert preview["prompt_ids"] == [waiting["prompt_id"]]
        contents = [m["content"] for m in preview["messages"]]
        assert "[alice wrote]\nIs prod down?" in contents  # each at their own place
        assert "[olga wrote]\nIs prod down?" in contents
        # The log pasted twice is given once (as a folded near-duplicate or a block reference).
        assert sum(c.count("worker crashed") for c in contents) == 6
        assert preview["messages"][-1]["answering"]
        assert contents[-1] == "[bob asks you]\nwhat happened?"
        assert preview["tools"] and preview["tools_tokens"] > 0  # the tools count too
        assert preview["opening_tokens"] == 0  # the input opens with a member's turn
        assert preview["tokens"] == preview["system_tokens"] + preview["tools_tokens"] + sum(
            m["tokens"] for m in preview["messages"]
        )
        # Nobody's words were folded into another member's.
        assert not [x for x in preview["excluded"] if "duplicate" in x["reason"]]

        # The blocked run is withdrawn by its author (so left out of the story, as while it
        # ran); bob's prompt starts with exactly the previewed input.
        await s.send("alice", CancelCommand("c", first["prompt_id"]))
        await s.settled(first["prompt_id"], waiting["prompt_id"])
        sent = provider.requests[1]
        assert sent.system == preview["system"]
        assert sent.tools == preview["tools"]
        assert [m["content"] for m in sent.messages] == contents
        # Who said each message: the attribution lines (in the contents) and the member in
        # each user message's ``name`` field.
        assert [(m["role"], m.get("name")) for m in sent.messages] == [
            (m["role"], m["author"] if m["role"] == "user" else None) for m in preview["messages"]
        ]

        with pytest.raises(Conflict) as nobody:
            await b.call(context_api.preview_context, session_id=sid, user_id="mallory")
        assert nobody.value.http_status == 409
        history = json.loads(
            (await b.call(context_api.preview_context, session_id=sid, user_id="alice")).body
        )
        assert history["prompt_ids"] == [] and not any(m["answering"] for m in history["messages"])


async def test_a_preview_lists_the_run_in_flight_and_the_runs_before_the_members(
    tmp_path: Path,
) -> None:
    """Review RN-4: carol's run in flight, and dave's prompt answered before bob's, are in
    bob's next call whatever way they end; his preview gave neither nor listed them."""
    async with first_call_held(tmp_path) as (b, provider, gate, asked):
        sid = await b.new_session({"bob": "editor", "carol": "editor", "dave": "editor"})
        s = await b.session(sid)
        said = [("carol", "carol holds the runner"), ("dave", "dave is next"), ("bob", "bob waits")]
        (carols, daves, bobs), preview = await prompts_behind_a_run_in_flight(
            b, sid, asked, said, "bob"
        )
        assert preview["prompt_ids"] == [bobs["prompt_id"]]
        reply = s.room.doc.entry(carols["prompt_id"]).reply_id
        assert preview["excluded"] == [
            {"entry_id": carols["prompt_id"], "reason": RUNNING},
            {"entry_id": reply, "reason": RUNNING},
            {"entry_id": daves["prompt_id"], "reason": ANSWERED_FIRST},
        ]
        gate.set()
        await s.settled(carols["prompt_id"], daves["prompt_id"], bobs["prompt_id"])
        bobs_call = [m["content"] for m in provider.requests[2].messages]
        assert bobs_call[0] == "[carol wrote]\ncarol holds the runner"
        assert "[dave wrote]\ndave is next" in bobs_call


def _parts(preview: dict[str, Any]) -> int:
    """What a preview's ``tokens`` is the sum of: the messages it lists, and the rest."""
    fixed = preview["system_tokens"] + preview["tools_tokens"] + preview["opening_tokens"]
    return fixed + sum(m["tokens"] for m in preview["messages"])


def _as_history(author: str, text: str) -> int:
    """A member's prompt as a message of a later call (answered, nobody asking it)."""
    return count_tokens(f"[{author} wrote]\n{text}") + framing_tokens(author)


async def test_a_preview_says_what_the_runs_before_the_call_add_to_its_tokens(
    tmp_path: Path,
) -> None:
    """FX70: a preview lists the run in flight and the prompts answered first in
    ``excluded`` (review RN-4), but did not say whether its ``tokens`` counted them. It
    does not: ``tokens`` is the input as given now, its messages' sum; ``pending_tokens``
    is what they add as they stand now (each prompt as history, the reply so far), which
    is what the call's input grows by once their runs end (and the rest of the reply)."""
    gates = [asyncio.Event(), asyncio.Event()]
    dave_asked = asyncio.Event()

    def script(sent: Sent) -> Answer:
        n = len(provider.requests)
        if n == 2:
            dave_asked.set()
        return ["half ", gates[0], "done"] if n == 1 else [gates[1], "ok"] if n == 2 else ["fine"]

    provider = FakeModel(script)
    async with (
        sql_store(sqlite_url(tmp_path)) as store,
        backend(memory_settings(), store=store, model=provider) as b,
    ):
        sid = await b.new_session({"bob": "editor", "carol": "editor", "dave": "editor"})
        s = await b.session(sid)

        async def bobs_preview() -> dict[str, Any]:
            raw = await b.call(context_api.preview_context, session_id=sid, user_id="bob")
            preview: dict[str, Any] = json.loads(raw.body)
            assert preview["tokens"] == _parts(preview)  # the listed entries are apart
            return preview

        alone = await bobs_preview()
        assert alone["pending_tokens"] == 0 and alone["excluded"] == []
        carols = await s.send("carol", PromptCommand("1", "carol holds the runner"))
        await s.until(MemorySession.streaming)
        await s.send("dave", PromptCommand("2", "dave is next"))
        await s.send("bob", PromptCommand("3", "bob waits"))
        before = await bobs_preview()
        assert [x["reason"] for x in before["excluded"]] == [RUNNING, RUNNING, ANSWERED_FIRST]
        carol = _as_history("carol", "carol holds the runner")
        dave = _as_history("dave", "dave is next")
        assert before["pending_tokens"] == carol + count_tokens("half ") + framing_tokens() + dave

        gates[0].set()  # carol's run ends: her prompt and whole reply are in bob's input now
        await s.settled(carols["prompt_id"])
        async with asyncio.timeout(10):
            await dave_asked.wait()
        after = await bobs_preview()
        assert [x["reason"] for x in after["excluded"]] == [RUNNING, RUNNING]  # dave's run
        assert (
            after["tokens"]
            == before["tokens"] + carol + count_tokens("half done") + framing_tokens()
        )
        assert after["pending_tokens"] == dave  # his reply has no text yet
        gates[1].set()


async def test_a_preview_under_coalesce_is_the_run_that_answers_the_member(
    tmp_path: Path,
) -> None:
    """Review RD-5: a preview made while another run streamed showed alice's prompt alone,
    with her tools; the call answered hers and bob's together, with none (bob may not
    search). It is the run that takes her prompt were the one in flight over."""
    async with first_call_held(tmp_path) as (b, provider, _gate, asked):
        roles = {"alice": "editor", "bob": "editor", "carol": "editor"}
        sid = await b.new_session(roles, policy="coalesce")
        denied = MemberPut(role="editor", denials=["tool:search_documents"])
        await b.call(members_api.put_member, session_id=sid, user_id="bob", body=denied)
        s = await b.session(sid)
        said = [("carol", "blocked run"), ("alice", "ALICE-Q"), ("bob", "BOB-Q")]
        (first, alices, bobs), preview = await prompts_behind_a_run_in_flight(
            b, sid, asked, said, "alice"
        )
        assert preview["prompt_ids"] == [alices["prompt_id"], bobs["prompt_id"]]
        assert preview["tools"] == []
        contents = [m["content"] for m in preview["messages"]]
        assert contents[-2:] == ["[alice asks you]\nALICE-Q", "[bob asks you]\nBOB-Q"]

        await s.send("carol", CancelCommand("c", first["prompt_id"]))
        await s.settled(first["prompt_id"], alices["prompt_id"], bobs["prompt_id"])
        sent = provider.requests[1]
        assert [m["content"] for m in sent.messages] == contents
        assert sent.tools == preview["tools"]


async def test_preview_needs_a_user(tmp_path: Path) -> None:
    """The route's query is read before the handler runs: its endpoint, with no app."""
    async with (
        sql_store(sqlite_url(tmp_path)) as store,
        backend(memory_settings(), store=store, model=FakeModel()) as b,
    ):
        sid = await b.new_session({"alice": "editor"})
        response = await b.request("GET", f"/api/v1/sessions/{sid}/context")
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "invalid"
        given = await b.request("GET", f"/api/v1/sessions/{sid}/context?user_id=alice")
        assert given.status_code == 200 and given.json()["user_id"] == "alice"


async def test_a_members_preview_spends_their_read_budget(tmp_path: Path) -> None:
    """Review (bounded): a member's preview of their model input was unbudgeted (7 ms of
    CPU each on a 400-message session; a viewer's 4 connections held everyone else's
    requests at 49-125 ms). It spends their read budget by what it shows; once spent,
    nothing is built. The admin key's spend none."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", read_bytes_per_s=1.0, read_burst_bytes=3_000
    )
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"vic": "viewer", "ed": "editor"})
        ed = await server.connect(sid, "ed")
        await ed.command({"type": "message", "id": "m", "text": "x" * 2_000})
        token = await server.token(sid, "vic")
        url = f"/api/v1/sessions/{sid}/context?user_id=vic"
        headers = {"Authorization": f"Bearer {token}"}
        first = await server.http.get(url, headers=headers)
        assert first.status_code == 200, first.text
        second = await server.http.get(url, headers=headers)
        assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limited"
        assert (await server.http.get(url)).status_code == 200


def builds(server: RunningServer) -> float:
    """The context builds the server made so far (its histogram's count)."""
    histogram = server.app.state.parley.metrics.context_build
    samples = histogram.collect()[0].samples
    return next(s.value for s in samples if s.name.endswith("_count"))


async def test_previews_in_a_loop_are_refused_past_what_they_cost(tmp_path: Path) -> None:
    """Review K4: a preview spent the read budget by its model input only, not by its
    answer nor by its build (40-400 ms on a long session): one viewer's loops of previews
    made every session's replies 13 times slower, never refused. Each build of a changed
    session now costs the history it reads, so a loop is refused with ``rate_limited``
    and when to come back, after a few builds."""
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        read_bytes_per_s=1.0,
        read_burst_bytes=200_000,
        commands_per_second=1000.0,
        commands_burst=1000,
        user_commands_per_second=1000.0,
    )
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"vic": "viewer", "ed": "editor"})
        ed = await server.connect(sid, "ed")
        for n in range(100):
            posted = await ed.command({"type": "message", "id": f"m{n}", "text": f"note {n}"})
            assert "message_id" in posted, posted
        token = await server.token(sid, "vic")
        url = f"/api/v1/sessions/{sid}/context?user_id=vic"
        headers = {"Authorization": f"Bearer {token}"}
        answers = []
        for n in range(10):  # as while a reply streams: the session changes between reads
            await ed.command({"type": "message", "id": f"more{n}", "text": "and more"})
            answers.append(await server.http.get(url, headers=headers))
            if answers[-1].status_code != 200:
                break
        assert [a.status_code for a in answers] == [200, 200, 429]
        refused = answers[-1]
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1


async def test_a_preview_of_the_same_state_is_built_once(tmp_path: Path) -> None:
    """Review K4: every preview was built anew, however often a member asked of one state
    of the session. What was built is kept while nothing it reads changes, per scope."""
    async with serve_in_process(make_settings(sqlite_url(tmp_path), tmp_path / "d")) as server:
        sid = await server.new_session({"vic": "viewer", "ed": "editor"})
        ed = await server.connect(sid, "ed")
        await ed.command({"type": "message", "id": "m", "text": "the first note"})
        token = await server.token(sid, "vic")
        url = f"/api/v1/sessions/{sid}/context?user_id="
        vic = {"Authorization": f"Bearer {token}"}

        async def preview(user_id: str, **headers: str) -> dict[str, object]:
            answer = await server.http.get(url + user_id, headers=headers)
            assert answer.status_code == 200, answer.text
            body: dict[str, object] = answer.json()
            return body

        before = builds(server)
        first = await preview("vic", **vic)
        for _ in range(5):
            assert await preview("vic", **vic) == first
        assert builds(server) == before + 1
        await preview("ed")  # another scope: built for it
        assert builds(server) == before + 2
        await ed.command({"type": "message", "id": "n", "text": "a second note"})
        changed = await preview("vic", **vic)
        assert builds(server) == before + 3
        assert "a second note" in str(changed["messages"])
        await ed.command({"type": "set_fact", "id": "f", "key": "tier", "value": "gold"})
        assert "gold" in str((await preview("vic", **vic))["system"])
        assert builds(server) == before + 4


async def test_a_preview_asked_again_of_the_same_state_is_not_encoded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review B2-2: a kept preview was still serialised on every ask (30 ms of the loop per
    320 KB answer). Its answer is kept encoded, per user it was asked for."""
    encoded: list[str] = []
    encode = context_api.encode_preview

    async def counted(user_id: str, *args: Any) -> bytes:
        encoded.append(user_id)
        return await encode(user_id, *args)

    monkeypatch.setattr(context_api, "encode_preview", counted)
    async with serve_in_process(make_settings(sqlite_url(tmp_path), tmp_path / "d")) as server:
        sid = await server.new_session({"vic": "viewer", "val": "viewer", "ed": "editor"})
        ed = await server.connect(sid, "ed")
        await ed.command({"type": "message", "id": "m", "text": "the first note"})
        url = f"/api/v1/sessions/{sid}/context?user_id="
        answers = [await server.http.get(url + "vic") for _ in range(4)]
        assert {a.status_code for a in answers} == {200}
        assert len({a.content for a in answers}) == 1
        assert answers[0].json()["user_id"] == "vic"
        assert encoded == ["vic"]
        other = await server.http.get(url + "val")  # the same scope, another user's answer
        assert other.status_code == 200 and other.json()["user_id"] == "val"
        assert encoded == ["vic", "val"]
        await ed.command({"type": "message", "id": "n", "text": "a second note"})
        changed = await server.http.get(url + "vic")
        assert "a second note" in str(changed.json()["messages"])
        assert encoded == ["vic", "val", "vic"]


async def test_a_long_preview_is_encoded_a_few_messages_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review RN-3: a 20,000-entry session's preview was validated and encoded in one block
    of the event loop (0.3-0.8 s, every other session waiting); it gives the loop back
    every few messages, and the answer is the same document."""
    monkeypatch.setattr(context_api, "ITEMS_PER_TURN", 2)
    turns = 0
    during: list[int] = []
    encode = context_api.encode_preview

    async def measured(*args: Any) -> bytes:
        before = turns
        body = await encode(*args)
        during.append(turns - before)
        return body

    async def other_clients() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    monkeypatch.setattr(context_api, "encode_preview", measured)
    ticker = asyncio.create_task(other_clients())
    try:
        async with serve_in_process(make_settings(sqlite_url(tmp_path), tmp_path / "d")) as server:
            sid = await server.new_session({"vic": "viewer", "ed": "editor"})
            ed = await server.connect(sid, "ed")
            for n in range(8):
                await ed.command({"type": "message", "id": f"m{n}", "text": f'note {n} "x"'})
            answer = await server.http.get(f"/api/v1/sessions/{sid}/context?user_id=vic")
    finally:
        ticker.cancel()
    assert answer.status_code == 200, answer.text
    preview = context_api.ContextPreview.model_validate_json(answer.content)
    assert [m.content for m in preview.messages][-8:] == [
        f'[ed wrote]\nnote {n} "x"' for n in range(8)
    ]
    assert during and during[0] >= 4, during  # 8 messages, 2 a turn


async def test_previews_of_one_session_are_bounded_together(tmp_path: Path) -> None:
    """Review B2-2: each member's previews spent only their own read budget, so ten
    viewers of one session took the event loop together. What previews build and encode
    is paid by the session too: past it, a preview that would be made anew is refused
    ``rate_limited`` with when to come back; an answer kept is still sent.
    Review RG: one member's loop of previews spent the session's budget, and another
    member's preview was refused 3-7 times in 10. Each member has a share of it (a
    quarter), so one member past their share is refused and the others are still served,
    until the session's budget is spent."""
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        preview_work_bytes_per_s=1.0,
        preview_work_burst_bytes=1_000,
    )
    async with serve_in_process(settings) as server:
        members = {"vic": "viewer", "val": "viewer", "vera": "viewer", "ed": "editor"}
        sid = await server.new_session(members)
        ed = await server.connect(sid, "ed")
        await ed.command({"type": "message", "id": "m", "text": "x" * 2_000})
        url = f"/api/v1/sessions/{sid}/context?user_id="

        async def preview(user_id: str) -> int:
            token = await server.token(sid, user_id)
            headers = {"Authorization": f"Bearer {token}"}
            answer = await server.http.get(url + user_id, headers=headers)
            if answer.status_code == 429:
                assert answer.json()["error"]["code"] == "rate_limited"
                assert int(answer.headers["Retry-After"]) >= 1
            return answer.status_code

        assert await preview("vic") == 200
        await ed.command({"type": "message", "id": "m2", "text": "changed"})
        assert await preview("vic") == 429  # a loop: to be made anew, past vic's share
        assert await preview("val") == 200  # another member: still served
        assert await preview("vera") == 429  # the session's budget is spent
        assert await preview("val") == 200  # kept: only sent
        assert (await server.http.get(url + "vera")).status_code == 200  # the admin key


async def test_a_members_refused_fact_tells_nothing_of_a_pin_they_may_not_read(
    tmp_path: Path,
) -> None:
    """Review R3-1, over REST: alice's reply draws on a document only she may read, and
    bob sees its placeholder. Pinned (by bob, or by alice while bob only sets facts), it
    counted at its hidden text, so the fewest words of a fact refused told bob its size.
    Two sessions whose hidden replies differ in size give bob the same threshold."""
    words = [0]

    def script(sent: Sent) -> Answer:
        if sent.messages[-1]["role"] == "tool":
            return ["plan: " + " ".join(["lorem"] * words[0])]
        return [call("search_documents", {"query": "launch plan"})]

    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        context_window_tokens=1700,  # what the facts and pins had before the summary, tools counted
        max_output_tokens=512,
        commands_burst=1000,
    )
    async with serve_in_process(settings, FakeModel(script, echo_tools=False)) as server:
        thresholds: dict[tuple[int, str], int] = {}
        for pinner in ("bob", "alice"):
            for n in (100, 250):
                words[0] = n
                thresholds[n, pinner] = await _fewest_words_refused(server, pinner)
        assert thresholds[100, "bob"] == thresholds[250, "bob"]
        assert thresholds[100, "alice"] == thresholds[250, "alice"]


async def _fewest_words_refused(server: RunningServer, pinner: str) -> int:
    """In a new session, alice's reply drawn from her document, pinned by ``pinner``: the
    fewest words of a fact bob is refused ``too_large``, found as he would, by trying."""
    sid = await server.new_session({"alice": "editor", "bob": "editor"})
    path = f"/api/v1/sessions/{sid}"
    plan = {"title": "plan", "text": "The launch plan.", "readers": {"users": ["alice"]}}
    assert (await server.http.post(f"{path}/documents", json=plan)).status_code == 201
    alice = await server.connect(sid, "alice")
    await alice.command({"type": "prompt", "id": "p", "text": "the launch plan?"})
    await alice.wait_until(lambda c: all_replies_settled(c, 1))
    reply = next(e for e in alice.entries() if e["kind"] == "reply")
    assert "[restricted:" in reply["content"] and "lorem" not in reply["content"]
    tokens = {user: await server.token(sid, user) for user in ("alice", "bob")}
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        as_pinner = {"Authorization": f"Bearer {tokens[pinner]}"}
        pinned = await http.post(f"{path}/pins", json={"entry_id": reply["id"]}, headers=as_pinner)
        assert pinned.status_code == 201, pinned.text
        as_bob = {"Authorization": f"Bearer {tokens['bob']}"}
        return await fewest_fact_words_refused(http, path, as_bob)


async def fewest_fact_words_refused(
    http: httpx.AsyncClient,
    session_path: str,
    headers: dict[str, str] | None = None,
    most: int = 1_000,
    refusal_says: str = "",
) -> int:
    """The fewest words (up to ``most``) of the fact ``f`` the caller is refused
    ``too_large``, found as a member would, by trying; every refusal says ``refusal_says``."""
    low, high = 1, most
    while low < high:
        k = (low + high) // 2
        fact = {"value": " ".join(["a"] * k)}
        put = await http.put(f"{session_path}/facts/f", json=fact, headers=headers)
        if put.status_code == 413:
            assert refusal_says in put.json()["error"]["message"]
            high = k
        else:
            assert put.status_code == 200, put.text
            low = k + 1
    return low


async def test_a_readers_reply_goes_private_whether_or_not_a_restricted_pin_fits(
    tmp_path: Path,
) -> None:
    """Review R6-1: alice pins her reply drawn on a document only she may read; bob's
    facts (counted at its placeholder for him, R3-1) leave it out of her input when it is
    large, not when it is small. Her next reply went shared in the one case, private in
    the other: bob, reading the transcript, learnt the hidden reply's size. A reply now
    inherits every pin its issuers may read, given or left out."""
    words = [0]

    def script(sent: Sent) -> Answer:
        if sent.messages[-1]["role"] == "tool":
            return ["plan: " + " ".join(["lorem"] * words[0])]
        if "launch" in sent.asked_text():
            return [call("search_documents", {"query": "launch plan"})]
        return ["noted"]

    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        context_window_tokens=1700,  # what the facts and pins had before the summary, tools counted
        max_output_tokens=512,
        commands_burst=1000,
    )
    async with serve_in_process(settings, FakeModel(script, echo_tools=False)) as server:
        private: dict[int, bool] = {}
        for n in (20, 250):
            words[0] = n
            private[n] = await _next_reply_private_to_bob(server)
        assert private == {20: True, 250: True}


async def _next_reply_private_to_bob(server: RunningServer) -> bool:
    """In a new session: alice's reply drawn from her document, pinned by her; long
    messages of hers after it (the restricted turns leave her history's budget); bob's
    fact; then alice's next reply: whether bob reads it as a placeholder."""
    sid = await server.new_session({"alice": "editor", "bob": "editor"})
    path = f"/api/v1/sessions/{sid}"
    plan = {"title": "plan", "text": "The launch plan.", "readers": {"users": ["alice"]}}
    assert (await server.http.post(f"{path}/documents", json=plan)).status_code == 201
    alice = await server.connect(sid, "alice")
    await alice.command({"type": "prompt", "id": "p", "text": "the launch plan?"})
    await alice.wait_until(lambda c: all_replies_settled(c, 1))
    reply = next(e for e in alice.entries() if e["kind"] == "reply")
    assert "[restricted:" in reply["content"]
    tokens = {user: await server.token(sid, user) for user in ("alice", "bob")}
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        as_alice = {"Authorization": f"Bearer {tokens['alice']}"}
        as_bob = {"Authorization": f"Bearer {tokens['bob']}"}
        pinned = await http.post(f"{path}/pins", json={"entry_id": reply["id"]}, headers=as_alice)
        assert pinned.status_code == 201, pinned.text
        for m in ("m1", "m2"):
            await alice.command({"type": "message", "id": m, "text": " ".join(["note"] * 300)})
        fact = {"value": " ".join(["a"] * 160)}
        put = await http.put(f"{path}/facts/f", json=fact, headers=as_bob)
        assert put.status_code == 200, put.text
        await alice.command({"type": "prompt", "id": "q", "text": "anything new?"})
        await alice.wait_until(lambda c: all_replies_settled(c, 2))
        seen = await http.get(f"{path}/transcript", headers=as_bob)
    last = [m for m in seen.json()["messages"] if m["kind"] == "reply"][-1]
    return "[restricted:" in last["content"]


async def test_a_preview_answers_what_is_stored_not_a_write_under_way() -> None:
    """Review RA-4, left open then: the preview read the document as a write had changed it
    before its commit, so it showed a message (and would show a fact, a pin, a waiting
    prompt) not stored yet, and still shown if the commit then failed; another node,
    asked next, answered older. It reads the document as committed now
    (``RoomRegistry.committed``): the live one once the write under way settled, else
    (held up) a copy of the committed one."""
    store, sid = HeldAtCommit(), SESSION
    await store.create_session(sid, "t", Policy.QUEUE.value, 0)  # (no access rows in memory)
    await add_members(store, {"alice": "editor"})
    async with backend(memory_settings(), store=store, model=FakeModel()) as b:
        s = await b.session(sid)

        async def shown() -> list[str]:
            answer = await b.call(context_api.preview_context, session_id=sid, user_id="alice")
            return [m["content"] for m in json.loads(answer.body)["messages"]]

        await s.message("alice", "one")
        stored = await shown()
        assert stored == ["[alice wrote]\none"], stored
        store.hold_next = True
        refused = asyncio.ensure_future(s.message("alice", "two"))
        async with asyncio.timeout(10):
            await store.holding.wait()
        assert [e.content for e in s.room.doc.entries()] == ["one", "two"]  # not stored
        assert await shown() == stored  # the write held up: the committed copy
        reading = asyncio.ensure_future(shown())
        for _ in range(20):  # every chance to answer while the write waits
            await asyncio.sleep(0)
        store.release.set()
        assert (await refused)["code"] == "unavailable"
        assert await reading == stored
        assert await shown() == stored
        assert (await s.message("alice", "three"))["type"] == "ack"
        assert await shown() == [*stored, "[alice wrote]\nthree"]


async def bobs_vault_reply_then_notes(
    b: Backend, readers: list[str]
) -> tuple[str, str, MemorySession]:
    """A session of editors alice and bob where bob's first prompt was answered from a
    document ``readers`` may read, then 120 notes of alice's: its id, the document's, and
    the session."""
    sid = await b.new_session({"alice": "editor", "bob": "editor"})
    vault = DocumentCreate(title="Vault", text=SECRET, readers=ReadersIn(users=readers))
    document = await b.call(access_api.create_document, session_id=sid, body=vault)
    s = await b.session(sid)
    asked = await s.prompt("bob", "what is the vault code?")
    await s.settled(asked["prompt_id"])
    for i in range(120):
        await s.message("alice", f"note {i % 40} on the launch plan")
    return sid, document.id, s


async def test_a_preview_in_a_scope_of_its_own_folds_its_history_ahead_in_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A preview for a member who may read what not every member may (bob, his reply
    drawn from a document of his) is built in a fold of its own, which nothing had folded:
    it folded the whole history in one call (20,000 entries: 0.45 s of the loop). It is
    folded ahead in steps first, and the preview is what a build from nothing gives."""
    async with (
        sql_store(sqlite_url(tmp_path)) as store,
        backend(memory_settings(), store=store, model=FakeModel(script)) as b,
    ):
        sid, _, s = await bobs_vault_reply_then_notes(b, ["bob"])
        counted = FoldSteps(monkeypatch, step=8)
        answer = await counted.during(
            b.call(context_api.preview_context, session_id=sid, user_id="bob")
        )
        assert SECRET in answer.body.decode()
        folds = s.room.context._builder._folds
        [own] = [kept.fold for key, kept in folds.items() if key.startswith("readable:")]
        per_turn = counted.of(own)
        assert sum(per_turn) >= 120 and max(per_turn) <= 8
        assert counted.builds and all(built == cold for built, cold in counted.builds)


async def test_a_preview_folding_ahead_as_a_grant_is_taken_away_answers_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice's preview folds its history ahead, the loop free between its steps; the admin
    denies her ``read:<document>`` meanwhile (bob's reply drew on it). The preview, answered
    after the denial, gives nothing she may no longer read: what it builds is judged again
    after its fold ahead, as of then, and built with no await after that."""
    async with (
        sql_store(sqlite_url(tmp_path)) as store,
        backend(memory_settings(), store=store, model=FakeModel(script)) as b,
    ):
        sid, document, _ = await bobs_vault_reply_then_notes(b, ["alice", "bob"])
        fold_ahead, parked, go = SessionContext.fold_ahead, asyncio.Event(), asyncio.Event()

        async def slow(context: SessionContext, *args: Any, **named: Any) -> int:
            if not parked.is_set():  # the preview's first fold ahead waits for the denial
                parked.set()
                await go.wait()
            return await fold_ahead(context, *args, **named)

        monkeypatch.setattr(SessionContext, "fold_ahead", slow)
        reading = asyncio.ensure_future(
            b.call(context_api.preview_context, session_id=sid, user_id="alice")
        )
        async with asyncio.timeout(10):
            await parked.wait()
        denied = MemberPut(role="editor", denials=[f"read:{document}"])
        await b.call(members_api.put_member, session_id=sid, user_id="alice", body=denied)
        go.set()
        answer = json.loads((await reading).body)
        assert SECRET not in json.dumps(answer)
        assert [x for x in answer["excluded"] if "alice may not read it" in x["reason"]]
        again = await b.call(context_api.preview_context, session_id=sid, user_id="bob")
        assert SECRET in again.body.decode()  # bob still may


async def test_facts_up_to_their_share_beside_a_summary_leave_a_small_window_a_prompt(
    tmp_path: Path,
) -> None:
    """Review RV39-F1b, over a socket and REST: in a 2,000-token window with 1,024 for the
    output, facts set until refused and a summary as long as its call may write left no
    room for any prompt (the facts' share was half the budget, the summary on top): every
    prompt failed ``too_large``. The facts' share is now what the summary, the tools'
    definitions (review RV42-F1: the built-in search's 89 tokens, at 2,200) and a prompt
    leave, so a short prompt is answered."""

    def script(sent: Sent) -> Answer:
        if sent.purpose == "summary":
            return ["Summary: " + "the team shipped the release on time " * 400]
        return ["ok"]

    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        context_window_tokens=2_200,
        max_output_tokens=1_024,
        summary_min_tokens=100,
        commands_burst=1_000,
    )
    async with serve_in_process(settings, FakeModel(script)) as server:
        sid = await server.new_session({"alice": "editor"})
        path = f"/api/v1/sessions/{sid}"
        alice = await server.connect(sid, "alice")
        for n in range(30):
            text = f"update {n}: " + " ".join(["progress"] * 60)
            await alice.command({"type": "message", "id": f"m{n}", "text": text})
        await alice.command({"type": "prompt", "id": "p", "text": "status?"})
        await alice.wait_until(lambda c: all_replies_settled(c, 1))
        headers = {"Authorization": f"Bearer {await server.token(sid, 'alice')}"}
        preview = f"{path}/context?user_id=alice"
        for _ in range(400):  # the summariser runs after the run, on a task of its own
            summary = (await server.http.get(preview)).json()["summary"]
            if summary is not None:
                break
            await asyncio.sleep(0.05)
        assert summary is not None and summary["tokens"] > 500
        refused = None
        for n in range(40):
            fact = {"value": " ".join(["detail"] * 20)}
            put = await server.http.put(f"{path}/facts/f{n}", json=fact, headers=headers)
            if put.status_code != 200:
                refused = put
                break
        assert refused is not None and n > 1
        error = refused.json()["error"]
        assert (refused.status_code, error["code"]) == (413, "too_large")
        assert "beside the largest summary, the tools and a prompt" in error["message"]
        asked = await alice.command({"type": "prompt", "id": "q", "text": "and now?"})

        def ended(c: Any) -> dict[str, Any] | None:
            said = next(e for e in c.entries() if e["id"] == asked["prompt_id"])
            return None if said["status"] in ("queued", "running") else said

        await alice.wait_until(lambda c: ended(c) is not None)
        prompt = ended(alice)
        assert prompt is not None and prompt["status"] == "done", prompt


async def test_a_registered_tools_definition_leaves_the_facts_less_room(tmp_path: Path) -> None:
    """Review RV42-F1: what every call carries counts the definitions of every tool a run
    may be offered, a tool registered on the server too (from its registration on), so
    facts accepted never leave a prompt without room once a summary comes."""
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        context_window_tokens=2_600,
        max_output_tokens=1_024,
        commands_burst=1_000,
    )
    async with serve_in_process(settings) as server:

        async def words_accepted(sid: str) -> int:
            path = f"/api/v1/sessions/{sid}"
            return await fewest_fact_words_refused(server.http, path, None, 2_000, "the tools") - 1

        before = await words_accepted(await server.new_session({"alice": "editor"}))
        described = " ".join(["looks a record up by its number"] * 40)
        tool = {"name": "lookup", "description": described, "url": "https://example.com/t"}
        assert (await server.http.post("/api/v1/tools", json=tool)).status_code == 201
        after = await words_accepted(await server.new_session({"alice": "editor"}))
        assert before - after >= 200  # its definition: some 250 tokens, a word each here
