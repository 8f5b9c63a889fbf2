"""Prompting over plain HTTP (``server.http.prompts``) on a real server: the same door as a
socket's commands, so the same order, idempotency, refusals and error codes."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from parley.server.settings import Settings
from parley.server.store.access import AccessStore
from parley.server.store.db import create_engine
from parley.server.store.tables import audit_log
from parley.session.ratelimit import Spend
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.server.cluster.nodes import cluster, settled
from tests.server.test_context_api import first_call_waits
from tests.server.test_events import _wait_running
from tests.yclient import all_replies_settled


def as_member(server: RunningServer, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=20
    )


def two_commands(tmp_path: Path) -> Settings:
    """A server's settings where each member has two commands to spend, and no more."""
    return make_settings(
        sqlite_url(tmp_path), tmp_path / "data", commands_burst=1, user_commands_per_second=0.001
    )


async def spend_both(member: httpx.AsyncClient, base: str) -> list[httpx.Response]:
    """The member's two commands (``two_commands``), spent on messages."""
    spent = [await member.post(f"{base}/messages", json={"text": f"m{n}"}) for n in range(2)]
    assert [a.status_code for a in spent] == [202, 202]
    return spent


def _error(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, str(response.json()["error"]["code"])


async def test_a_prompt_over_http_joins_the_socket_members_transcript_in_order(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path / "data")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor", "bot": "editor"})
        alice = await server.connect(sid, "alice")
        said = await alice.command({"type": "message", "id": "m1", "text": "hello bot"})
        async with as_member(server, await server.token(sid, "bot")) as bot:
            sent = await bot.post(
                f"/api/v1/sessions/{sid}/prompts", json={"id": "p1", "text": "summarise this"}
            )
            assert sent.status_code == 202, sent.text
            accepted = sent.json()
            assert accepted["seq"] == said["seq"] + 1
            assert accepted["position"] in (1, None)  # waiting, or already taken by the runner
            # Resent with its id: the first answer, nothing stored again.
            again = await bot.post(
                f"/api/v1/sessions/{sid}/prompts", json={"id": "p1", "text": "summarise this"}
            )
            assert again.status_code == 202, again.text
            assert {k: again.json()[k] for k in ("prompt_id", "seq")} == {
                k: accepted[k] for k in ("prompt_id", "seq")
            }
            posted = await bot.post(f"/api/v1/sessions/{sid}/messages", json={"text": "thanks"})
            assert posted.status_code == 202, posted.text
            assert posted.json()["position"] is None
            await alice.wait_until(lambda c: all_replies_settled(c, 1))
            status = await bot.get(f"/api/v1/sessions/{sid}/prompts/{accepted['prompt_id']}")
        assert status.status_code == 200, status.text
        entries = alice.entries()
        reply = next(e for e in entries if e["kind"] == "reply")
        assert status.json() == {
            "prompt_id": accepted["prompt_id"],
            "seq": accepted["seq"],
            "author": "bot",
            "status": "done",
            "reason_code": None,
            "reason": None,
            "retry_at": None,
            "reply_id": reply["id"],
            "position": None,
        }
        # The socket member sees the HTTP entries where their seq puts them, once each.
        ours = [e for e in entries if e["kind"] in ("prompt", "message")]
        assert [(e["author"], e["content"]) for e in ours] == [
            ("alice", "hello bot"),
            ("bot", "summarise this"),
            ("bot", "thanks"),
        ]
        assert [e["seq"] for e in ours] == [said["seq"], accepted["seq"], posted.json()["seq"]]
        assert [e["id"] for e in await server.transcript(sid)] == [e["id"] for e in entries]


async def test_refusals_carry_the_doors_codes_and_statuses(tmp_path: Path) -> None:
    gate = asyncio.Event()  # the first model call waits for it
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", max_pending_per_user=1)
    async with serve_in_process(settings, first_call_waits(gate)) as server:
        sid = await server.new_session({"alice": "editor", "vera": "viewer"})
        other = await server.new_session({"alice": "editor"})
        watcher = await server.connect(sid, "alice")
        prompts = f"/api/v1/sessions/{sid}/prompts"
        async with (
            as_member(server, await server.token(sid, "alice")) as alice,
            as_member(server, await server.token(sid, "vera")) as vera,
        ):
            first = (await alice.post(prompts, json={"text": "first"})).json()
            await _wait_running(watcher, first["prompt_id"])
            second = await alice.post(prompts, json={"id": "p2", "text": "second"})
            assert second.status_code == 202, second.text
            assert second.json()["position"] == 1
            waiting = second.json()["prompt_id"]

            assert _error(await alice.post(prompts, json={"text": "third"})) == (
                429,
                "queue_full",
            )
            assert _error(await vera.post(prompts, json={"text": "me too"})) == (403, "forbidden")
            vera_says = await vera.post(f"/api/v1/sessions/{sid}/messages", json={"text": "x"})
            assert _error(vera_says) == (403, "forbidden")
            as_other = await alice.post(
                prompts, json={"text": "x", "as_user": "vera"}
            )  # only the admin sends as someone else
            assert _error(as_other) == (403, "forbidden")
            elsewhere = await alice.post(f"/api/v1/sessions/{other}/prompts", json={"text": "x"})
            assert _error(elsewhere) == (403, "forbidden")
            assert _error(await alice.post(prompts, json={"text": "nul \x00"})) == (422, "invalid")
            assert _error(await alice.post(prompts, json={"text": "   "})) == (422, "invalid")
            assert _error(await alice.post(prompts, json={"text": 5})) == (422, "invalid")
            too_long = "x" * (settings.max_prompt_chars + 1)
            assert _error(await alice.post(prompts, json={"text": too_long})) == (413, "too_large")

            running = (await alice.get(f"{prompts}/{first['prompt_id']}")).json()
            assert (running["status"], running["position"]) == ("running", None)
            queued = (await vera.get(f"{prompts}/{waiting}")).json()  # any reader may look
            assert (queued["status"], queued["position"]) == ("queued", 1)
            assert _error(await alice.get(f"{prompts}/nope")) == (404, "not_found")

            cancelled = await alice.post(f"{prompts}/{waiting}/cancel", json={})
            assert cancelled.status_code == 200, cancelled.text
            assert {k: cancelled.json()[k] for k in ("status", "reason_code", "position")} == {
                "status": "cancelled",
                "reason_code": "cancelled",
                "position": None,
            }
            assert cancelled.json()["reason"] == "cancelled by alice"
            again = await alice.post(f"{prompts}/{waiting}/cancel", json={})
            assert again.status_code == 200 and again.json() == cancelled.json()  # as asked
            stop = await vera.post(f"{prompts}/{first['prompt_id']}/cancel", json={})
            assert _error(stop) == (403, "forbidden")

        # The admin key sends as a member, or as nobody who is not one; both audited.
        admin = server.http
        sent = await admin.post(prompts, json={"text": "as alice", "as_user": "alice"})
        assert sent.status_code == 202, sent.text
        stranger = await admin.post(prompts, json={"text": "x", "as_user": "mallory"})
        assert _error(stranger) == (403, "forbidden")
        assert _error(await admin.post(prompts, json={"text": "x"})) == (422, "invalid")
        gate.set()
        await watcher.wait_until(lambda c: all_replies_settled(c, 2))
        engine = create_engine(settings.database_url)
        try:
            async with engine.connect() as connection:
                rows = await connection.execute(
                    select(audit_log.c.kind, audit_log.c.actor).where(audit_log.c.session_id == sid)
                )
                records = [(r.kind, r.actor) for r in rows]
        finally:
            await engine.dispose()
        assert records.count(("as_user", "admin")) == 2
        assert ("refused", "mallory") in records and ("refused", "vera") in records


async def test_a_session_that_rejects_while_busy_answers_409(tmp_path: Path) -> None:
    gate = asyncio.Event()
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings, first_call_waits(gate)) as server:
        created = await server.http.post("/api/v1/sessions", json={"policy": "reject"})
        sid = created.json()["id"]
        await server.http.put(f"/api/v1/sessions/{sid}/members/alice", json={"role": "editor"})
        watcher = await server.connect(sid, "alice")
        prompts = f"/api/v1/sessions/{sid}/prompts"
        first = await server.http.post(prompts, json={"text": "one", "as_user": "alice"})
        assert first.status_code == 202, first.text
        await _wait_running(watcher, first.json()["prompt_id"])
        busy = await server.http.post(prompts, json={"text": "two", "as_user": "alice"})
        assert _error(busy) == (409, "busy")
        gate.set()
        await watcher.wait_until(lambda c: all_replies_settled(c, 1))


def _forwarded(metrics: str) -> float:
    line = 'parley_cluster_forwarded_commands_total{outcome="answered"}'
    found = [row.split()[-1] for row in metrics.splitlines() if row.startswith(line)]
    return float(found[0]) if found else 0.0


@pytest.mark.postgres
async def test_a_prompt_posted_to_a_follower_runs_on_the_holder(tmp_path: Path) -> None:
    async with cluster(tmp_path, 2) as nodes:
        sid = await nodes.new_session({"a": "editor", "bot": "editor"})
        watcher = await nodes.connect(nodes.nodes[0], sid, "a")
        await watcher.command({"type": "message", "id": "m1", "text": "hi"})
        holder, _ = await nodes.wait_holder(sid)
        follower = next(n for n in nodes.nodes if n.env["PARLEY_NODE_ID"] != holder)
        minted = await nodes.http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": "bot"})
        headers = {"Authorization": f"Bearer {minted.json()['token']}"}
        prompts = f"/api/v1/sessions/{sid}/prompts"
        async with httpx.AsyncClient(
            base_url=follower.base_url, headers=headers, timeout=30
        ) as bot:
            metrics = f"{follower.base_url}/metrics"  # the admin key's
            before = _forwarded((await nodes.http.get(metrics)).text)
            sent = await bot.post(prompts, json={"id": "p1", "text": "hello from http"})
            assert sent.status_code == 202, sent.text
            again = await bot.post(prompts, json={"id": "p1", "text": "hello from http"})
            assert again.json()["prompt_id"] == sent.json()["prompt_id"]
            assert _forwarded((await nodes.http.get(metrics)).text) == before + 2
            prompt_id = sent.json()["prompt_id"]
            await watcher.wait_until(lambda c: settled(c, {prompt_id}), timeout=30)
            status = (await bot.get(f"{prompts}/{prompt_id}")).json()
        reply = next(e for e in watcher.entries() if e["kind"] == "reply")
        assert (status["status"], status["reply_id"], status["author"]) == (
            "done",
            reply["id"],
            "bot",
        )
        assert [e["id"] for e in watcher.entries()].count(prompt_id) == 1
        assert (await nodes.holder(sid)) is not None
        assert (await nodes.holder(sid) or ("", 0))[0] == holder  # it ran where it runs
        await watcher.close()


async def test_http_commands_spend_the_members_command_budget(tmp_path: Path) -> None:
    async with serve_in_process(two_commands(tmp_path)) as server:
        sid = await server.new_session({"bot": "editor"})
        messages = f"/api/v1/sessions/{sid}/messages"
        async with as_member(server, await server.token(sid, "bot")) as bot:
            answers = [await bot.post(messages, json={"text": f"m{n}"}) for n in range(3)]
        assert [a.status_code for a in answers[:2]] == [202, 202]
        assert _error(answers[2]) == (429, "rate_limited")
        # When the budget has a command again (review RP-2: no ``Retry-After`` here), and
        # in the body as a socket's refusal says it (FX59: the body said nothing).
        wait_ms = answers[2].json()["error"]["retry_after_ms"]
        assert isinstance(wait_ms, int) and wait_ms > 1000  # a command in 1,000 s
        assert answers[2].headers["Retry-After"] == str(math.ceil(wait_ms / 1000))
        assert len(await server.transcript(sid)) == 2


async def test_facts_pins_and_the_policy_over_http_spend_the_same_budget(tmp_path: Path) -> None:
    # A socket's ``set_fact``, ``pin``/``unpin`` and ``set_policy`` spend the member's
    # command budget; the REST routes that make the same changes (each a write every
    # socket of the session is sent) spend it too, and so does a member's change of the
    # session's other settings (an event every reader is sent).
    async with serve_in_process(two_commands(tmp_path)) as server:
        sid = await server.new_session({"olga": "owner", "writer": "editor"})
        base = f"/api/v1/sessions/{sid}"
        posted = await server.http.post(
            f"{base}/messages", json={"text": "pin me", "as_user": "writer"}
        )
        pinned_id = posted.json()["message_id"]
        for setup in (
            await server.http.put(f"{base}/facts/kept", json={"value": "v"}),
            await server.http.post(f"{base}/pins", json={"entry_id": pinned_id}),
        ):
            assert setup.status_code in (200, 201), setup.text
        async with as_member(server, await server.token(sid, "olga")) as olga:
            spent = await spend_both(olga, base)
            answers = [
                await olga.put(f"{base}/facts/new", json={"value": "v"}),
                await olga.delete(f"{base}/facts/kept"),
                await olga.post(f"{base}/pins", json={"entry_id": spent[0].json()["message_id"]}),
                await olga.delete(f"{base}/pins/{pinned_id}"),
                await olga.patch(base, json={"policy": "reject"}),
                await olga.patch(base, json={"title": "renamed"}),
            ]
        assert [_error(a) for a in answers] == [(429, "rate_limited")] * len(answers)
        facts = (await server.http.get(f"{base}/facts")).json()["facts"]
        assert list(facts) == ["kept"]
        assert (await server.http.get(f"{base}/pins")).json()["pins"] == [pinned_id]
        session = (await server.http.get(base)).json()
        assert (session["policy"], session["title"]) == ("queue", "test")


async def test_invites_and_documents_by_a_member_spend_the_same_budget(tmp_path: Path) -> None:
    # Minting and revoking invites, attaching and removing documents: each a write and an
    # audit record, bounded by the member's command rate (the admin key's are not).
    async with serve_in_process(two_commands(tmp_path)) as server:
        sid = await server.new_session({"olga": "owner", "bob": "editor"})
        base = f"/api/v1/sessions/{sid}"
        invite = await server.http.post(f"{base}/invites", json={"user_id": "bob"})
        document = {"title": "Notes", "text": "kept", "readers": {"users": ["olga"]}}
        made = await server.http.post(f"{base}/documents", json=document)
        assert (invite.status_code, made.status_code) == (201, 201), made.text
        async with as_member(server, await server.token(sid, "olga")) as olga:
            await spend_both(olga, base)
            answers = [
                await olga.post(f"{base}/invites", json={"user_id": "bob"}),
                await olga.delete(f"{base}/invites/{invite.json()['id']}"),
                await olga.post(f"{base}/documents", json=document),
                await olga.delete(f"{base}/documents/{made.json()['id']}"),
            ]
        assert [_error(a) for a in answers] == [(429, "rate_limited")] * len(answers)
        invites = (await server.http.get(f"{base}/invites")).json()["invites"]
        assert [i["id"] for i in invites] == [invite.json()["id"]]
        documents = (await server.http.get(f"{base}/documents")).json()["documents"]
        assert [d["id"] for d in documents] == [made.json()["id"]]


async def test_refused_calls_are_audited_at_most_at_the_members_command_rate(
    tmp_path: Path,
) -> None:
    # Every refusal is an audit write: a member calling routes they may not, again and
    # again, writes at most at their command rate (a socket's refused commands spend it
    # too); past it they are told to slow down, and nothing is written.
    async with serve_in_process(two_commands(tmp_path)) as server:
        sid = await server.new_session({"vera": "viewer"})
        async with as_member(server, await server.token(sid, "vera")) as vera:
            answers = [
                await vera.get(f"/api/v1/sessions/{sid}/audit"),
                await vera.get(f"/api/v1/sessions/{sid}/usage"),  # the admin's only
                *[await vera.get(f"/api/v1/sessions/{sid}/audit") for _ in range(4)],
            ]
        assert [_error(a) for a in answers] == [(403, "forbidden")] * 2 + [
            (429, "rate_limited")
        ] * 4
        audit = (await server.http.get(f"/api/v1/sessions/{sid}/audit")).json()["records"]
        refused = [r for r in audit if r["kind"] == "refused" and r["actor"] == "vera"]
        assert [r["data"]["reason"] for r in refused][1] == "admin only"
        assert len(refused) == 2


async def test_documents_are_listed_without_their_texts_and_read_within_the_read_budget(
    tmp_path: Path,
) -> None:
    """Review (bounded): every list of documents, and every read of one, loaded the text of
    every document of the session, and spent nothing: a viewer who could read none of 40
    documents of 800 kB took 150 ms of CPU a call, and stalled everyone. The list reads
    no text; one document's text spends the reader's read budget."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", read_bytes_per_s=1.0, read_burst_bytes=3_000
    )
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"ed": "editor", "vic": "viewer"})
        base = f"/api/v1/sessions/{sid}/documents"
        made = [
            await server.http.post(
                base, json={"title": f"d{n}", "text": "x" * 2_000, "readers": {"users": ["ed"]}}
            )
            for n in range(2)
        ]
        assert [m.status_code for m in made] == [201, 201]
        async with as_member(server, await server.token(sid, "vic")) as vic:
            assert (await vic.get(base)).json()["documents"] == []
            assert (await vic.get(f"{base}/{made[0].json()['id']}")).status_code == 404
        async with as_member(server, await server.token(sid, "ed")) as ed:
            listed = (await ed.get(base)).json()["documents"]
            assert [(d["chars"], d["text"]) for d in listed] == [(2_000, None)] * 2
            first = await ed.get(f"{base}/{made[0].json()['id']}")
            assert first.status_code == 200 and first.json()["text"] == "x" * 2_000
            second = await ed.get(f"{base}/{made[1].json()['id']}")
            assert _error(second) == (429, "rate_limited")


async def test_a_members_request_bodies_spend_their_command_bytes_before_they_are_parsed(
    tmp_path: Path,
) -> None:
    """Review (bounded): a REST body was parsed before anything was charged, so bodies
    refused 422 (1 MB of 90,000 extra keys: 180 ms of CPU each) came one after the other,
    never refused, and held everyone else's requests half a second. A member's body spends
    their command bytes first, as a socket's command does."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", command_bytes_per_s=1.0, command_burst_bytes=50_000
    )
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"ed": "editor"})
        junk = "{" + ",".join(f'"k{n}":1' for n in range(4_000)) + "}"  # 30 kB, refused 422
        async with as_member(server, await server.token(sid, "ed")) as ed:
            url = f"/api/v1/sessions/{sid}/messages"
            headers = {"content-type": "application/json"}
            first = await ed.post(url, content=junk, headers=headers)
            assert first.status_code == 422, first.text
            second = await ed.post(url, content=junk, headers=headers)
            assert _error(second) == (429, "rate_limited")
        message = await server.http.post(url, json={"text": "hi", "as_user": "ed"})
        assert message.status_code == 202, message.text  # the admin key's: unbudgeted


async def test_a_command_of_more_values_than_any_holds_is_refused_alike_at_both_doors(
    tmp_path: Path,
) -> None:
    """Review: a 1 MB command of 350,000 empty lists in a field no command has held the
    loop 0.5-0.8 s on a socket (190 ms over REST) before it was refused ``invalid``; both
    doors refuse it unparsed now, with the same code."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", command_burst_bytes=4 * 1024 * 1024
    )
    lists = ",".join(["[]"] * 200_000)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"ed": "editor"})
        socket = await server.connect(sid, "ed")
        answered: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        socket.replies["c1"] = answered
        await socket.send_raw(f'{{"type":"message","id":"c1","text":"hi","x":[{lists}]}}')
        reply = await asyncio.wait_for(answered, 10)
        assert (reply["code"], reply["id"]) == ("invalid", "c1")
        assert "JSON values" in reply["message"]
        async with as_member(server, await server.token(sid, "ed")) as ed:
            for door in ("messages", "prompts"):
                posted = await ed.post(
                    f"/api/v1/sessions/{sid}/{door}",
                    content=f'{{"text":"hi","x":[{lists}]}}',
                    headers={"content-type": "application/json"},
                )
                assert _error(posted) == (422, "invalid")
                assert "JSON values" in posted.json()["error"]["message"]
        said = await socket.command({"type": "message", "id": "c2", "text": "still here"})
        assert said["type"] == "ack", said


async def test_a_document_read_spends_its_answers_bytes_and_a_refused_one_loads_no_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review RJ-2: a document's text was loaded before its read was charged, and charged
    its characters, not the answer's bytes (three times as many for CJK text). It spends
    its answer's bytes, and a read refused loads no text."""
    burst = 3_000
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", read_bytes_per_s=0.001, read_burst_bytes=burst
    )
    loads: list[str] = []
    get_document = AccessStore.get_document

    async def counted(self: AccessStore, session_id: str, document_id: str) -> Any:
        loads.append(document_id)
        return await get_document(self, session_id, document_id)

    monkeypatch.setattr(AccessStore, "get_document", counted)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"ed": "editor"})
        base = f"/api/v1/sessions/{sid}/documents"
        text = "漢" * 800
        made = await server.http.post(
            base, json={"title": "d", "text": text, "readers": {"users": ["ed"]}}
        )
        path = f"{base}/{made.json()['id']}"
        async with as_member(server, await server.token(sid, "ed")) as ed:
            first = await ed.get(path)
            assert first.status_code == 200 and first.json()["text"] == text
            room = await server.app.state.parley.rooms.get(sid)
            now = room.clock()
            left = room.budgets.bucket("ed", Spend.READ_BYTES, now).left(now)
            assert burst - left > len(first.content) - 1 > 2_400  # its bytes, not its characters
            assert len(loads) == 1
            assert _error(await ed.get(path)) == (429, "rate_limited")
            assert len(loads) == 1  # refused before its text was loaded
