"""The session's events as Server-Sent Events (``server.http.sse``), read with a real SSE client
(httpx-sse over plain httpx): what a member sees, resuming by id with no gap and no
duplicate (after a dropped stream, a restart, on another node of a cluster), refusals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from parley.server.http.retry_hint import CAP_RETRY_AFTER_S
from parley.server.http.sse import EVENTS_PAGE
from parley.server.runtime.room import Work
from tests.conftest import (
    ADMIN_KEY,
    RunningServer,
    ServerProcess,
    free_port,
    make_settings,
    serve_in_process,
    sqlite_url,
)
from tests.fake_model import FakeModel, Sent
from tests.server.cluster.nodes import cluster
from tests.server.test_event_webhooks import SECRET_NUMBER
from tests.server.test_restricted import SECRET, restricted_session
from tests.server.test_restricted import script as vault_script

EVENTS = "/api/v1/sessions/{}/events"


class Reader:
    """One open stream: the events read so far."""

    def __init__(self, events: AsyncIterator[ServerSentEvent]) -> None:
        self._events = events
        self.got: list[ServerSentEvent] = []

    async def until(self, done: Callable[[ServerSentEvent], bool]) -> ServerSentEvent:
        async with asyncio.timeout(20):
            async for event in self._events:
                if event.retry is not None and not event.data:
                    continue  # the reconnection delay the stream opens with
                self.got.append(event)
                if done(event):
                    return event
        raise AssertionError(f"the stream ended first: {[e.event for e in self.got]}")

    async def rest(self) -> list[ServerSentEvent]:
        """Read until the server ends the stream."""
        async with asyncio.timeout(20):
            async for event in self._events:
                if event.data:
                    self.got.append(event)
        return self.got


@contextlib.asynccontextmanager
async def stream(
    base_url: str, sid: str, key: str, last_id: str | None = None, *, query: bool = False
) -> AsyncIterator[Reader]:
    headers = {"Authorization": f"Bearer {key}"}
    params = {}
    if last_id is not None:
        if query:
            params["last_event_id"] = last_id
        else:
            headers["Last-Event-ID"] = last_id
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=30) as http,
        aconnect_sse(http, "GET", EVENTS.format(sid), headers=headers, params=params) as source,
    ):
        assert source.response.status_code == 200, await source.response.aread()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        yield Reader(source.aiter_sse())


def data(event: ServerSentEvent) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(event.data)
    return parsed


def fields(event: ServerSentEvent) -> dict[str, Any]:
    """A stored event's own data (``session.events``)."""
    own: dict[str, Any] = data(event)["data"]
    return own


def reply_text(events: list[ServerSentEvent], reply_id: str) -> str:
    return "".join(
        data(e)["text"]
        for e in events
        if e.event == "reply_delta" and data(e)["reply_id"] == reply_id
    )


def completes(event: ServerSentEvent) -> bool:
    return event.event in ("reply_completed", "run_failed") and fields(event)["reply_id"]


def messages_posted(events: list[ServerSentEvent]) -> int:
    return [e.event for e in events].count("message_posted")


def stored_seqs(events: list[ServerSentEvent]) -> list[int]:
    return [data(e)["seq"] for e in events if e.event not in ("reply_delta", "queue", "end")]


async def prompt(server: RunningServer, sid: str, user: str, text: str) -> dict[str, Any]:
    token = await server.token(sid, user)
    sent = await server.http.post(
        f"/api/v1/sessions/{sid}/prompts",
        json={"text": text},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert sent.status_code == 202, sent.text
    answer: dict[str, Any] = sent.json()
    return answer


async def reply_content(server: RunningServer, sid: str, reply_id: str) -> str:
    return next(m["content"] for m in await server.transcript(sid) if m["id"] == reply_id)


def gated(*gates: asyncio.Event) -> FakeModel:
    """A model whose reply comes in pieces, each after the test opens its gate."""

    def script(sent: Sent) -> list[Any]:
        steps: list[Any] = ["It begins. "]
        for n, gate in enumerate(gates, start=1):
            steps += [gate, f"Part {n} - ünïcode ✓. "]
        return [*steps, "The end."]

    return FakeModel(script)


async def test_a_member_sees_the_reply_stream_in_and_finish(tmp_path: Path) -> None:
    gate = asyncio.Event()
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings, gated(gate)) as server:
        sid = await server.new_session({"alice": "editor"})
        async with stream(server.base_url, sid, await server.token(sid, "alice"), "0") as alice:
            joined = await alice.until(lambda e: e.event == "member_joined")
            assert (fields(joined)["user_id"], joined.id) == ("alice", "1")
            accepted = await prompt(server, sid, "alice", "tell me")
            seen = await alice.until(lambda e: e.event == "prompt_accepted")
            assert data(seen)["text"] == "tell me"
            assert fields(seen)["prompt_id"] == accepted["prompt_id"]
            started = await alice.until(lambda e: e.event == "run_started")
            reply_id = fields(started)["reply_id"]
            assert started.id == f"{data(started)['seq']}.{reply_id}.0"
            # Text streams in before the reply is finished (the model waits at its gate).
            first = await alice.until(lambda e: e.event == "reply_delta")
            assert data(first)["text"].startswith("It begins.")
            gate.set()
            completed = await alice.until(completes)
        assert completed.event == "reply_completed"
        assert completed.id == str(data(completed)["seq"])  # no reply runs after it
        text = reply_text(alice.got, reply_id)
        assert text == await reply_content(server, sid, reply_id)
        assert text.endswith("The end.") and "Part 1 - ünïcode ✓." in text
        # Each delta's id says where the text stands after it.
        offsets = [data(e)["offset"] for e in alice.got if e.event == "reply_delta"]
        assert offsets[0] == 0 and offsets == sorted(set(offsets))
        queues = [data(e)["queue"] for e in alice.got if e.event == "queue"]
        assert [q["prompt_id"] for q in queues[-1]] == []
        seqs = stored_seqs(alice.got)
        assert seqs == list(range(1, len(seqs) + 1))


async def test_a_viewer_gets_what_the_shared_document_shows(tmp_path: Path) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings, FakeModel(vault_script)) as server:
        sid = await restricted_session(server)
        readers = {user: await server.token(sid, user) for user in ("alice", "olga")}
        async with (
            stream(server.base_url, sid, readers["alice"], "0") as alice,
            stream(server.base_url, sid, readers["olga"], "0") as olga,
        ):
            await prompt(server, sid, "bob", "what is the vault code?")
            for reader in (alice, olga):
                await reader.until(completes)
        reply_id = fields(alice.got[-1])["reply_id"]
        shown = await reply_content(server, sid, reply_id)
        assert "[restricted:" in shown and "7731" not in shown
        for reader in (alice, olga):  # the document's text, for a reader of it or not
            assert reply_text(reader.got, reply_id) == shown
            assert not SECRET_NUMBER.search(str([e.data for e in reader.got]).encode())
            assert SECRET not in str([e.data for e in reader.got])


async def test_a_dropped_stream_resumes_from_its_last_id_without_gap_or_duplicate(
    tmp_path: Path,
) -> None:
    gates = [asyncio.Event(), asyncio.Event()]
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings, gated(*gates)) as server:
        sid = await server.new_session({"alice": "editor"})
        token = await server.token(sid, "alice")
        async with stream(server.base_url, sid, token, "0") as first:
            await prompt(server, sid, "alice", "tell me")
            await first.until(lambda e: e.event == "reply_delta")
            gates[0].set()
            await first.until(lambda e: e.event == "reply_delta" and "Part 1" in data(e)["text"])
        last_id = first.got[-1].id
        assert last_id.count(".") == 2  # mid-reply
        async with stream(server.base_url, sid, token) as late:  # no id: from now on
            so_far = await late.until(lambda e: e.event == "reply_delta")
        gates[1].set()  # more text while nobody reads
        async with stream(server.base_url, sid, token, last_id, query=True) as second:
            completed = await second.until(completes)
        reply_id = fields(completed)["reply_id"]
        both = first.got + second.got
        text = await reply_content(server, sid, reply_id)
        assert reply_text(both, reply_id) == text
        # A stream opened mid-reply starts with the whole text so far.
        assert data(so_far)["offset"] == 0
        assert data(so_far)["text"] == reply_text(first.got, reply_id)
        assert not any(e.event == "prompt_accepted" for e in late.got)  # stored before it
        seqs = stored_seqs(both)
        assert seqs == list(range(1, len(seqs) + 1))
        # Resuming from the end again sends nothing stored twice.
        async with stream(server.base_url, sid, token, completed.id) as third:
            await prompt(server, sid, "alice", "again")
            accepted = await third.until(lambda e: e.event == "prompt_accepted")
        assert data(accepted)["seq"] == data(completed)["seq"] + 1


async def test_bad_ids_caps_and_callers_are_refused_with_stable_codes(tmp_path: Path) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d", max_streams_per_user=1)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        other = await server.new_session({"bob": "editor"})
        token = await server.token(sid, "alice")
        sse = {"Accept": "text/event-stream"}
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as http:

            async def refused(
                sid: str, key: str, last_id: str | bytes | None = None
            ) -> tuple[int, str]:
                headers = {**sse, "Authorization": f"Bearer {key}"}
                if last_id is not None:
                    headers["Last-Event-ID"] = last_id
                async with http.stream("GET", EVENTS.format(sid), headers=headers) as answer:
                    if answer.status_code == 200:  # taken: a stream, which does not end
                        return 200, "streaming"
                    return answer.status_code, json.loads(await answer.aread())["error"]["code"]

            for bad in (
                "abc",
                "-1",
                "+1",
                b"1\xa0",  # a no-break space (Latin-1): not a header's blank
                "1.2",
                "99",
                "1.deadbeef.0",
                "1" * 200,
            ):
                assert await refused(sid, token, bad) == (400, "bad_event_id"), bad
            assert await refused(other, token) == (403, "forbidden")
            assert await refused(sid, "nonsense") == (401, "unauthenticated")
            assert await refused("nope", ADMIN_KEY) == (404, "not_found")
            async with stream(server.base_url, sid, token):
                assert await refused(sid, token) == (429, "too_many_streams")
                # FX69: past a cap, when to try again, as past a cap on sockets.
                headers = {**sse, "Authorization": f"Bearer {token}"}
                capped = await http.get(EVENTS.format(sid), headers=headers)
                assert capped.headers["Retry-After"] == str(round(CAP_RETRY_AFTER_S))
                assert capped.json()["error"]["retry_after_ms"] == CAP_RETRY_AFTER_S * 1000
            # Without the header the route is still the admin's JSON pages.
            listed = await server.http.get(EVENTS.format(sid))
            assert listed.status_code == 200 and listed.json()["events"][0]["seq"] == 1
            as_member = await http.get(
                EVENTS.format(sid), headers={"Authorization": f"Bearer {token}"}
            )
            assert as_member.status_code == 403


async def test_a_browser_stream_takes_its_client_token_in_the_url(tmp_path: Path) -> None:
    """Review RC-2: a browser's ``EventSource`` sends no header, and the stream took its
    credential as ``Authorization`` alone (401): it takes a client token as ``?token=`` now,
    as the socket does; never the admin key, and a wrong token is 401 as in the header."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        other = await server.new_session({"bob": "editor"})
        token = await server.token(sid, "alice")
        await prompt(server, sid, "alice", "hello")
        sse = {"Accept": "text/event-stream", "Last-Event-ID": "0"}  # what EventSource sends
        async with (
            httpx.AsyncClient(base_url=server.base_url, timeout=20) as http,
            aconnect_sse(
                http, "GET", EVENTS.format(sid), headers=sse, params={"token": token}
            ) as source,
        ):
            assert source.response.status_code == 200, await source.response.aread()
            first = await Reader(source.aiter_sse()).until(lambda e: bool(e.data))
            assert data(first)["seq"] == 1
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as http:
            for key, status, code in (
                (ADMIN_KEY, 401, "unauthenticated"),  # the admin key: as a header only
                (token + "x", 401, "unauthenticated"),
                ("", 401, "unauthenticated"),
            ):
                params = {"token": key}
                async with http.stream("GET", EVENTS.format(sid), headers=sse, params=params) as a:
                    error = json.loads(await a.aread())["error"]
                    assert (a.status_code, error["code"]) == (status, code), key
            url = f"{EVENTS.format(sid)}?token={token}&token={token}"
            async with http.stream("GET", url, headers=sse) as answer:
                assert (
                    answer.status_code == 422 and "give it once" in (await answer.aread()).decode()
                )
            params = {"token": token}
            async with http.stream("GET", EVENTS.format(other), headers=sse, params=params) as a:
                assert a.status_code == 403  # another session's: as with the header
            # The JSON pages are the admin's: a member's token in the URL is let in, then refused.
            pages = await http.get(EVENTS.format(sid), params={"token": token})
            assert pages.status_code == 403 and pages.json()["error"]["code"] == "forbidden"


async def test_the_json_pages_check_a_resume_ids_form(tmp_path: Path) -> None:
    """Review RC-1: ``?last_event_id=`` of a form the document refuses was 200 on the JSON
    pages (which page by ``after``) and 400 on the stream: 400 on both now."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        for bad in ("\u00d7\u00f8", "03", "1" * 200):
            listed = await server.http.get(EVENTS.format(sid), params={"last_event_id": bad})
            assert listed.status_code == 400, (bad, listed.text)
            assert listed.json()["error"]["code"] == "bad_event_id"
            header = {"Last-Event-ID": bad.encode()}  # as bytes: httpx encodes str as ASCII
            headed = await server.http.get(EVENTS.format(sid), headers=header)
            assert headed.status_code == 400, bad
        fine = await server.http.get(EVENTS.format(sid), params={"last_event_id": "1"})
        assert fine.status_code == 200


# Accept headers and what they get, for a member and for the admin (review: a member's
# ``TEXT/EVENT-STREAM`` was the admin's JSON pages, refused 403; ``text/event-stream;q=0``
# and ``text/event-stream-x`` were a stream).
STREAM, PAGES = "text/event-stream", "application/json"
ACCEPTS = {
    "TEXT/EVENT-STREAM": (STREAM, STREAM),
    "Text/Event-Stream; charset=utf-8": (STREAM, STREAM),
    "text/event-stream;q=0, application/json": ("forbidden", PAGES),
    "application/json;q=0.9, text/event-stream;q=0.1": ("forbidden", PAGES),
    "text/*": (STREAM, STREAM),
    "*/*": ("forbidden", PAGES),
    "text/event-stream-x": ("not_acceptable", "not_acceptable"),
    "text/html, image/*;q=0.5": ("not_acceptable", "not_acceptable"),
    "text/event-stream;q=0": ("not_acceptable", "not_acceptable"),
}


async def test_the_accept_header_is_read_as_http_says(tmp_path: Path) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        keys = (await server.token(sid, "alice"), ADMIN_KEY)
        got = {}
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as http:
            for accept in ACCEPTS:
                answers = []
                for key in keys:
                    headers = {"Accept": accept, "Authorization": f"Bearer {key}"}
                    async with http.stream("GET", EVENTS.format(sid), headers=headers) as answer:
                        if answer.status_code == 200:  # a stream does not end: not read
                            answers.append(answer.headers["content-type"].partition(";")[0])
                        else:
                            error = json.loads(await answer.aread())["error"]
                            answers.append(error["code"])
                            if answer.status_code == 406:
                                assert accept[:20] in error["message"]
                got[accept] = tuple(answers)
    assert got == ACCEPTS


async def test_an_accept_no_route_answers_is_judged_after_the_caller(tmp_path: Path) -> None:
    """FX44: the route answered ``406 not_acceptable`` before it read the token, so a
    stranger learnt what the route answers before being told who may ask; every other
    route judges the caller first (``rest.route``)."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        other = await server.new_session({"bob": "editor"})
        bob = await server.token(other, "bob")
        wanted = {
            None: (401, "unauthenticated"),
            "nonsense": (401, "unauthenticated"),
            bob: (403, "forbidden"),  # a token of another session
            await server.token(sid, "alice"): (406, "not_acceptable"),
            ADMIN_KEY: (406, "not_acceptable"),
        }
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as http:
            for key, (status, code) in wanted.items():
                headers = {"Accept": "text/html"}
                if key is not None:
                    headers["Authorization"] = f"Bearer {key}"
                answer = await http.get(EVENTS.format(sid), headers=headers)
                assert (answer.status_code, answer.json()["error"]["code"]) == (status, code)


async def test_a_query_parameter_given_twice_is_refused_on_both_paths(tmp_path: Path) -> None:
    """Review: the stream took the last of two ``last_event_id`` (and ignored two
    ``limit``), so it resumed after either; the pages took two ``last_event_id`` too."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        auth = f"Bearer {await server.token(sid, 'alice')}"
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as http:
            # The JSON pages are the admin's (a member's token is ``forbidden`` there first).
            as_admin = server.http.headers["Authorization"]
            for accept, key in (("text/event-stream", auth), ("application/json", as_admin)):
                for query in ("last_event_id=0&last_event_id=1", "limit=5&limit=6"):
                    headers = {"Accept": accept, "Authorization": key}
                    url = f"{EVENTS.format(sid)}?{query}"
                    async with http.stream("GET", url, headers=headers) as answer:
                        body = await answer.aread() if answer.status_code != 200 else b"{}"
                        assert answer.status_code == 422, (accept, query)
                        error = json.loads(body)["error"]
                        assert error["code"] == "invalid" and "give it once" in error["message"]


async def test_streams_opened_at_once_are_capped_as_one_by_one(tmp_path: Path) -> None:
    # Each open reads the store between its check of the caps and counting itself: opened
    # together, every one passed the check before any counted.
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", max_streams_per_user=2, max_streams_per_session=3
    )
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        keys = {user: await server.token(sid, user) for user in ("alice", "bob")}
        async with (
            httpx.AsyncClient(base_url=server.base_url, timeout=20) as http,
            contextlib.AsyncExitStack() as opened,
        ):

            async def open_as(user: str) -> tuple[str, int]:
                headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {keys[user]}"}
                request = http.stream("GET", EVENTS.format(sid), headers=headers)
                response = await opened.enter_async_context(request)
                return user, response.status_code

            answers = await asyncio.gather(*(open_as(u) for u in ["alice"] * 6 + ["bob"] * 6))
            streams = [user for user, status in answers if status == 200]
            assert {status for _, status in answers} == {200, 429}
            assert len(streams) == 3 and max(streams.count("alice"), streams.count("bob")) == 2
            room = server.app.state.parley.rooms.loaded(sid)
            assert sum(room.feed.readers.values()) == 3


async def test_a_stream_ends_when_its_reader_or_session_goes(tmp_path: Path) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        async with stream(server.base_url, sid, await server.token(sid, "alice"), "0") as alice:
            await alice.until(lambda e: e.event == "member_joined" and e.id == "2")
            removed = await server.http.delete(f"/api/v1/sessions/{sid}/members/alice")
            assert removed.status_code in (200, 204), removed.text
            got = await alice.rest()
        assert got[-1].event == "end" and data(got[-1])["code"] == "forbidden"
        assert not any(e.event == "member_left" for e in got)  # not hers to read any more

        issued = await server.http.post(f"/api/v1/sessions/{sid}/tokens", json={"user_id": "bob"})
        token, jti = issued.json()["token"], issued.json()["jti"]
        async with stream(server.base_url, sid, token) as bob:
            await bob.until(lambda e: e.event == "queue")  # open
            revoked = await server.http.delete(f"/api/v1/sessions/{sid}/tokens/{jti}")
            assert revoked.status_code in (200, 204), revoked.text
            got = await bob.rest()
        assert got[-1].event == "end" and data(got[-1])["code"] == "unauthenticated"

        async with stream(server.base_url, sid, ADMIN_KEY) as admin:
            await admin.until(lambda e: e.event == "queue")  # open
            deleted = await server.http.delete(f"/api/v1/sessions/{sid}")
            assert deleted.status_code in (200, 204), deleted.text
            got = await admin.rest()
        assert got[-1].event == "end" and data(got[-1])["code"] == "not_found"


async def test_an_idle_stream_gets_heartbeats(tmp_path: Path) -> None:
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d", sse_heartbeat_s=0.05)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        headers = {
            "Accept": "text/event-stream",
            "Authorization": f"Bearer {await server.token(sid, 'alice')}",
        }
        async with (
            httpx.AsyncClient(base_url=server.base_url, timeout=20) as http,
            http.stream("GET", EVENTS.format(sid), headers=headers) as response,
        ):
            assert response.status_code == 200
            comments = 0
            async with asyncio.timeout(20):
                async for line in response.aiter_lines():
                    comments += line.startswith(":")
                    if comments == 2:
                        break
        assert comments == 2


@pytest.mark.xdist_group("heavy")
async def test_a_stream_resumes_across_a_server_restart(
    tmp_path: Path, server_processes: list[ServerProcess]
) -> None:
    url = sqlite_url(tmp_path)
    env = {"PARLEY_OFFLINE_TOKEN_DELAY_MS": "20"}
    process = ServerProcess(url, tmp_path / "d", free_port(), **env)
    server_processes.append(process)
    await process.start()
    async with httpx.AsyncClient(
        base_url=process.base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=20
    ) as admin:
        server = RunningServer(process.base_url, process.ws_url, admin)
        sid = await server.new_session({"alice": "editor"})
        token = await server.token(sid, "alice")
        async with stream(process.base_url, sid, token, "0") as before:
            await prompt(server, sid, "alice", "write at length " * 20)
            await before.until(lambda e: e.event == "reply_delta")
            process.kill()  # mid-reply: the reply is cut off
            with contextlib.suppress(httpx.HTTPError):
                await before.rest()
        last_id = before.got[-1].id
        assert last_id.count(".") == 2  # mid-reply
        await process.start()
        async with stream(process.base_url, sid, token, last_id) as after:
            ended = await after.until(completes)
        assert ended.event == "run_failed" and fields(ended)["reason_code"] == "server_restart"
        reply_id = fields(ended)["reply_id"]
        both = before.got + after.got
        assert reply_text(both, reply_id) == await reply_content(server, sid, reply_id)
        seqs = stored_seqs(both)
        assert seqs == list(range(1, len(seqs) + 1))


@pytest.mark.postgres
@pytest.mark.xdist_group("heavy")
async def test_a_follower_node_streams_and_resumes_a_stream_begun_on_the_runner(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path, 2, PARLEY_OFFLINE_TOKEN_DELAY_MS="40") as nodes:
        server = RunningServer(nodes.nodes[0].base_url, nodes.nodes[0].ws_url, nodes.http)
        sid = await nodes.new_session({"alice": "editor"})
        token = await server.token(sid, "alice")
        await prompt(server, sid, "alice", "tell the whole cluster")
        runner, _ = await nodes.wait_holder(sid)
        other = next(n for n in nodes.nodes if n.env["PARLEY_NODE_ID"] != runner)
        on_runner = nodes.node(runner)
        async with (
            stream(other.base_url, sid, token, "0") as follower,
            stream(on_runner.base_url, sid, token, "0") as dropped,
        ):
            await dropped.until(lambda e: e.event == "reply_delta")
            assert dropped.got[-1].id.count(".") == 2  # mid-reply
            # The runner's stream is dropped mid-reply; it resumes on the other node.
            async with stream(other.base_url, sid, token, dropped.got[-1].id) as resumed:
                completed = await resumed.until(completes)
            await follower.until(completes)
        reply_id = fields(completed)["reply_id"]
        text = await reply_content(server, sid, reply_id)
        assert text.endswith("deterministic.")
        assert reply_text(follower.got, reply_id) == text
        assert reply_text(dropped.got + resumed.got, reply_id) == text
        for got in (follower.got, dropped.got + resumed.got):
            seqs = stored_seqs(got)
            assert seqs == list(range(1, len(seqs) + 1))


@pytest.mark.xdist_group("heavy")
async def test_a_reader_that_takes_nothing_is_cut_and_the_others_read_on(
    tmp_path: Path,
) -> None:
    # 55 KB a piece, 5.5 MB in all: more than the server's and the kernel's buffers hold
    # for one connection (Linux lets a socket's send buffer grow to 4 MiB by default).
    piece = "many words " * 5000
    model = FakeModel(lambda sent: [piece] * 100)
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d", send_stall_timeout_s=0.5)
    async with serve_in_process(settings, model) as server:
        sid = await server.new_session({"alice": "editor"})
        token = await server.token(sid, "alice")
        port = int(server.base_url.rsplit(":", 1)[1])
        loop = asyncio.get_running_loop()
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it never reads
        stuck.setblocking(False)
        try:
            await loop.sock_connect(stuck, ("127.0.0.1", port))
            request = (
                f"GET {EVENTS.format(sid)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Accept: text/event-stream\r\nAuthorization: Bearer {token}\r\n"
                "Last-Event-ID: 0\r\n\r\n"
            )
            await loop.sock_sendall(stuck, request.encode())
            async with stream(server.base_url, sid, token, "0") as reader:
                await prompt(server, sid, "alice", "say a lot")
                completed = await reader.until(completes)
                reply_id = fields(completed)["reply_id"]
                assert len(reply_text(reader.got, reply_id)) == len(piece) * 100
                room = server.app.state.parley.rooms.loaded(sid)
                for _ in range(400):  # the stuck one is cut, this one reads on
                    if room.feed.readers["alice"] == 1:
                        break
                    await asyncio.sleep(0.05)
                assert room.feed.readers["alice"] == 1
                metrics = (await server.http.get("/metrics")).text
                assert "parley_event_streams_cut_total 1.0" in metrics
                assert "parley_open_event_streams 1.0" in metrics
            received = bytearray()
            async with asyncio.timeout(20):
                while chunk := await loop.sock_recv(stuck, 65536):
                    received += chunk
        finally:
            stuck.close()
        assert b"event: reply_delta" in received and b"event: reply_completed" not in received


async def eight_messages_and_a_viewer(server: RunningServer) -> tuple[str, str]:
    """A session where bob posted eight messages of 300 characters; vera's token."""
    sid = await server.new_session({"vera": "viewer", "bob": "editor"})
    bob = await server.connect(sid, "bob")
    for n in range(8):
        await bob.command({"type": "message", "id": f"m{n}", "text": "x" * 300})
    return sid, await server.token(sid, "vera")


async def test_a_members_stream_spends_their_read_budget(tmp_path: Path) -> None:
    """Review (bounded): the transcript is read within a member's read budget, but a
    stream replaying the session's history from its start spent nothing (a viewer read 76
    MB/s, 16 streams at a time, and took a core). A stream spends the budget by what it
    sends and is paced past it: the transcript read after it is refused."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", read_bytes_per_s=1.0, read_burst_bytes=2000
    )
    async with serve_in_process(settings, FakeModel.answering("ok")) as server:
        sid, token = await eight_messages_and_a_viewer(server)
        async with stream(server.base_url, sid, token, "0") as events:
            await events.until(lambda e: e.event == "message_posted")
            as_vera = {"Authorization": f"Bearer {token}"}
            read = await server.http.get(f"/api/v1/sessions/{sid}/transcript", headers=as_vera)
            assert read.status_code == 429 and read.json()["error"]["code"] == "rate_limited"


async def test_a_paced_stream_ends_when_its_session_is_deleted(tmp_path: Path) -> None:
    """Review of the pacing: a stream waiting for its reader's read budget went on sending
    after its session was deleted (and after a shutdown began). It ends as any stream
    does, while it waits."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", read_bytes_per_s=1.0, read_burst_bytes=1000
    )
    async with serve_in_process(settings, FakeModel.answering("ok")) as server:
        sid, token = await eight_messages_and_a_viewer(server)
        async with stream(server.base_url, sid, token, "0") as events:
            await events.until(lambda e: e.event == "member_joined")
            assert (await server.http.delete(f"/api/v1/sessions/{sid}")).status_code == 204
            ended = await events.until(lambda e: e.event == "end")
            assert data(ended)["code"] == "not_found"


async def posted(server: RunningServer, sid: str, count: int, size: int) -> None:
    """``count`` messages of ``size`` characters, posted in ``sid`` by the admin as bob."""
    for n in range(count):
        sent = await server.http.post(
            f"/api/v1/sessions/{sid}/messages",
            json={"text": f"{n} " + "x" * size, "as_user": "bob"},
        )
        assert sent.status_code == 202, sent.text


async def test_replaying_streams_let_other_clients_in_between_events(tmp_path: Path) -> None:
    """Review R4-2: a stream read and encoded page after page (200 events) without letting
    the loop go, so one viewer's 16 streams replaying a long session stalled every other
    client of the node 1-3 s at a time, within their read budget. Here a viewer's four
    streams (which never read) replay 600 events of 1 KB each, unpaced: a callback queued
    on the loop runs after each stream has sent at most an event or two (it waited for a
    page of 200 before), and ``/healthz`` and a message in another session are answered
    meanwhile. (What they sent is what they spent of the viewer's read budget, which
    refills at a byte a second.) Counted in turns of the loop, not in time: the server
    shares its loop with this test."""
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        read_bytes_per_s=1.0,
        read_burst_bytes=10**12,
        stream_work_bytes_per_s=10**12,  # no pacing: the loop is all the streams wait for
        commands_burst=10_000,
        user_commands_per_second=10_000.0,
    )
    async with serve_in_process(settings, FakeModel.answering("ok")) as server:
        sid = await server.new_session({"vera": "viewer", "bob": "editor"})
        await posted(server, sid, 600, 1000)
        other = await server.new_session({"olga": "editor"})
        olga = {"Authorization": f"Bearer {await server.token(other, 'olga')}"}
        token = await server.token(sid, "vera")
        room = server.app.state.parley.rooms.loaded(sid)

        def sent() -> float:
            return room.read_wait_s("vera", 10**12)  # the bytes spent, at a byte a second

        port = int(server.base_url.rsplit(":", 1)[1])
        request = (
            f"GET {EVENTS.format(sid)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Accept: text/event-stream\r\nAuthorization: Bearer {token}\r\n"
            "Last-Event-ID: 0\r\n\r\n"
        ).encode()
        writers = []
        try:
            for _ in range(4):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                writers.append(writer)
            await asyncio.gather(*(w.drain() for w in writers))
            async with asyncio.timeout(20):
                while sent() == 0:  # noqa: ASYNC110 (turns of the loop, not a wait for an event)
                    await asyncio.sleep(0)
            loop = asyncio.get_running_loop()
            before = sent()
            at_turn: asyncio.Future[float] = loop.create_future()
            loop.call_soon(lambda: at_turn.set_result(sent()))
            assert await at_turn - before < EVENTS_PAGE * 1000 / 4
            assert (await server.http.get("/healthz")).status_code == 200
            message = {"text": "still here"}
            answered = await server.http.post(
                f"/api/v1/sessions/{other}/messages", json=message, headers=olga
            )
            assert answered.status_code == 202, answered.text
        finally:
            for writer in writers:
                writer.close()


async def test_a_sessions_streams_share_its_stream_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review R4-2: what a session's streams read and encode together is paid from the
    session's stream work, by the events read and the bytes encoded. The admin key's
    stream pays it and never waits; a member's stream replaying (full pages: four events
    here) while it is owed sends nothing (here, for hours: 1 byte a second), and still
    ends when the session goes."""
    monkeypatch.setattr("parley.server.http.sse.EVENTS_PAGE", 4)
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        stream_work_bytes_per_s=1.0,
        stream_work_burst_bytes=4000,
    )
    async with serve_in_process(settings, FakeModel.answering("ok")) as server:
        sid, token = await eight_messages_and_a_viewer(server)
        async with stream(server.base_url, sid, ADMIN_KEY, "0") as admin:
            await admin.until(lambda _: messages_posted(admin.got) == 8)
        async with stream(server.base_url, sid, token, "0") as vera:
            assert (await server.http.delete(f"/api/v1/sessions/{sid}")).status_code == 204
            got = await vera.rest()
        assert [e.event for e in got] == ["end"]
        assert data(got[0])["code"] == "not_found"


async def test_a_stream_at_the_tail_is_not_held_by_the_sessions_replays(tmp_path: Path) -> None:
    """Review R5-1: while one viewer's replays kept the session's stream work in debt,
    every member's stream waited with them, an editor's live events 1-7 s late. A stream
    at the tail pays for what it is sent and never waits: the session owes work for
    hours here (1 byte a second), and a new message still reaches it."""
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        stream_work_bytes_per_s=1.0,
        stream_work_burst_bytes=4000,
    )
    async with serve_in_process(settings, FakeModel.answering("ok")) as server:
        sid, token = await eight_messages_and_a_viewer(server)
        async with stream(server.base_url, sid, ADMIN_KEY, "0") as admin:
            await admin.until(
                lambda _: messages_posted(admin.got) == 8
            )  # the replay put it in debt
        last_id = [e.id for e in admin.got if e.id][-1]
        async with stream(server.base_url, sid, token, last_id) as vera:
            await vera.until(lambda e: e.event == "queue")
            bob = await server.connect(sid, "bob")
            await bob.command({"type": "message", "id": "late", "text": "still live"})
            live = await vera.until(lambda e: e.event == "message_posted")
        assert fields(live)["message_id"] not in [
            fields(e)["message_id"] for e in admin.got if e.event == "message_posted"
        ]


async def test_one_members_replays_do_not_queue_anothers_behind_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review RA-4: a viewer's 16 streams replaying from ``Last-Event-ID: 0`` kept the
    session's stream work in debt, and another member's replay took its turn among all
    of theirs (40 s against 1 s). The session's stream work goes round the members whose
    replays wait for it, a turn each: while alice catches up, vera's eight streams
    together send about what alice's one does, not eight times it. (What each sent is what
    they spent of their read budget, which refills at a byte a second.)"""
    monkeypatch.setattr("parley.server.http.sse.EVENTS_PAGE", 4)
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        read_bytes_per_s=1.0,
        read_burst_bytes=10**12,
        stream_work_bytes_per_s=100_000.0,
        stream_work_burst_bytes=4000,
    )
    async with serve_in_process(settings, FakeModel.answering("ok")) as server:
        sid = await server.new_session({"vera": "viewer", "alice": "editor", "bob": "editor"})
        await posted(server, sid, 30, 500)
        room = server.app.state.parley.rooms.loaded(sid)

        def sent(user_id: str) -> float:
            return room.read_wait_s(user_id, 10**12)  # the bytes spent, at a byte a second

        port = int(server.base_url.rsplit(":", 1)[1])
        request = (
            f"GET {EVENTS.format(sid)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Accept: text/event-stream\r\n"
            f"Authorization: Bearer {await server.token(sid, 'vera')}\r\n"
            "Last-Event-ID: 0\r\n\r\n"
        ).encode()
        writers = []
        try:
            for _ in range(8):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                writers.append(writer)
            await asyncio.gather(*(w.drain() for w in writers))
            async with asyncio.timeout(20):
                while room.work_wait_s(Work.STREAMS) <= 0:  # noqa: ASYNC110 (a budget, no event)
                    await asyncio.sleep(0.01)
            before = sent("vera")
            async with stream(server.base_url, sid, await server.token(sid, "alice"), "0") as alice:
                await alice.until(lambda _: messages_posted(alice.got) == 30)
            by_vera, by_alice = sent("vera") - before, sent("alice")
        finally:
            for writer in writers:
                writer.close()
        assert by_vera <= 2 * by_alice, (by_vera, by_alice)
        assert before + by_vera < 6 * by_alice  # her replays went on all along: far from done
