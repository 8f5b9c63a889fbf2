"""Private side-threads over the real app, real sockets and a real database: nothing of
bob's side-thread reaches alice (every frame of her sockets, every REST answer she gets,
her model inputs, the shared document), and what bob shares back reaches everyone once.
(The rules, limits, parallel runs and restricted material are tested in a room on the
in-memory store: ``tests/server/runtime/test_side_threads.py``.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from parley.server.runtime import room as room_module
from parley.server.settings import Settings
from parley.session.ratelimit import Spend
from parley.session.yprotocol import SyncType, encode_sync
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.fake_model import Answer, FakeModel, Sent
from tests.yclient import YClient, all_replies_settled

MARKER = "ZQX-private-7f3e"  # bob's private question, and so the model's answer to it
DRAFT = "DRAFT-summary-c91"  # the model's draft summary, which bob edits before sharing
SHARED = "Checked privately: the deploy logs are fine."


def script(sent: Sent) -> Answer:
    asked = sent.asked_text()
    if "Summarise this private side-thread" in asked:
        return [f"{DRAFT}: bob looked at the logs."]
    return [f"you asked: {asked[-60:]}"]


class Recording:
    """A client socket that keeps every frame it receives, as bytes."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.frames: list[bytes] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ws, name)

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        async for frame in self.ws:
            self.frames.append(frame.encode() if isinstance(frame, str) else frame)
            yield frame


async def recorded(server: RunningServer, sid: str, user: str) -> tuple[YClient, Recording]:
    token = await server.token(sid, user)
    ws = await websockets.connect(f"{server.ws_url}/ws/sessions/{sid}?token={token}")
    recording = Recording(ws)
    client = YClient(recording)  # type: ignore[arg-type]  # a socket that records
    await ws.send(encode_sync(SyncType.STEP1, client.doc.get_state()))
    server.clients.append(client)
    return client, recording


MODEL = FakeModel(script)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    MODEL.requests.clear()
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings, MODEL) as running:
        yield running


def thread_state(client: YClient, thread_id: str) -> dict[str, Any] | None:
    """The latest state of a side-thread its owner's socket was sent."""
    found = None
    for frame in client.unsolicited:
        if frame.get("type") == "thread" and frame["thread"]["id"] == thread_id:
            found = frame["thread"]
    return found


def answered(client: YClient, thread_id: str, replies: int) -> bool:
    state = thread_state(client, thread_id)
    if state is None or state["running"]:
        return False
    return sum(t["kind"] == "reply" for t in state["turns"]) == replies


async def test_bobs_side_thread_never_reaches_alice_and_his_summary_reaches_everyone(
    server: RunningServer,
) -> None:
    sid = await server.new_session({"alice": "editor", "bob": "editor"})
    alice, alice_frames = await recorded(server, sid, "alice")
    bob = await server.connect(sid, "bob")
    await alice.command({"type": "prompt", "id": "a1", "text": "how do the deploy logs look?"})
    await bob.wait_until(lambda c: all_replies_settled(c, 1))
    anchor = next(e for e in bob.entries() if e["kind"] == "reply")

    opened = await bob.command({"type": "thread_open", "id": "t", "anchor": anchor["id"]})
    thread_id = opened["thread_id"]
    assert opened["anchor_seq"] == anchor["seq"]  # a number, as REST answers it
    await alice.command({"type": "message", "id": "m1", "text": "said after the anchor"})
    asked = {"type": "thread_prompt", "id": "q", "thread_id": thread_id, "text": MARKER}
    assert (await bob.command(asked))["type"] == "ack"
    await bob.wait_until(lambda c: answered(c, thread_id, 1))
    assert any(f.get("type") == "thread_delta" for f in bob.unsolicited)
    [private] = MODEL.requests_for("bob")
    assert "how do the deploy logs look?" in private.everything()
    assert "said after the anchor" not in private.everything()

    bob_token = await server.token(sid, "bob")
    base = f"/api/v1/sessions/{sid}/threads"
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {bob_token}"}
    ) as as_bob:
        listed = (await as_bob.get(base)).json()["threads"]
        assert [(t["id"], t["owner"], t["turns"]) for t in listed] == [(thread_id, "bob", 2)]
        assert listed[0]["anchor_seq"] == opened["anchor_seq"]
        summary = await as_bob.post(f"{base}/{thread_id}/summary", json={})
        assert summary.status_code == 202, summary.text
        await bob.wait_until(lambda c: answered(c, thread_id, 2))
        draft = (await as_bob.get(f"{base}/{thread_id}")).json()["turns"][-1]
        assert draft["summarise"] and DRAFT in draft["text"]
        shared = await as_bob.post(f"{base}/{thread_id}/share", json={"text": SHARED, "id": "s"})
        assert shared.status_code == 202, shared.text
        again = await as_bob.post(f"{base}/{thread_id}/share", json={"text": SHARED, "id": "s"})
        assert again.json() == shared.json()

    await alice.wait_until(lambda c: any(e["content"] == SHARED for e in c.entries()))
    await alice.command({"type": "prompt", "id": "a2", "text": "anything new?"})
    await alice.wait_until(lambda c: all_replies_settled(c, 2))
    for client in (alice, bob):
        posted = [e for e in client.entries() if e["content"] == SHARED]
        assert [(e["author"], e["kind"], e.get("source")) for e in posted] == [
            ("bob", "message", "private_thread")
        ]
    later = MODEL.requests_for("alice")[-1]
    assert later.everything().count(SHARED) == 1

    # Everything alice could read: her socket's frames, her REST answers, her model
    # inputs, the stored document and transcript. None holds a byte of the thread.
    alice_token = await server.token(sid, "alice")
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {alice_token}"}
    ) as as_alice:
        answers = [
            await as_alice.get(f"/api/v1/sessions/{sid}/transcript"),
            await as_alice.get(f"/api/v1/sessions/{sid}/context?user_id=alice"),
            await as_alice.get(f"/api/v1/sessions/{sid}/threads"),
            await as_alice.get(f"/api/v1/sessions/{sid}/threads/{thread_id}"),
            await as_alice.post(
                f"/api/v1/sessions/{sid}/threads/{thread_id}/prompts", json={"text": "peek"}
            ),
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 404, 404]
    assert answers[2].json() == {"threads": []}
    admin_preview = await server.http.get(f"/api/v1/sessions/{sid}/context?user_id=alice")
    events = await server.http.get(f"/api/v1/sessions/{sid}/events")
    seen = [
        *alice_frames.frames,
        *(a.content for a in answers),
        admin_preview.content,
        events.content,
        json.dumps(await server.transcript(sid)).encode(),
        *(json.dumps(r.body).encode() for r in MODEL.requests_for("alice")),
    ]
    assert alice_frames.frames, "alice's socket was recorded"
    assert MARKER in json.dumps(bob.unsolicited)  # the search finds it where it is
    for secret in (MARKER, DRAFT):
        assert not any(secret.encode() in chunk for chunk in seen), secret
    # Not even the thread's id, but where she named it herself (the two 404s).
    named = {answers[3].content, answers[4].content}
    assert not any(thread_id.encode() in chunk for chunk in seen if chunk not in named)


async def answered_thread(server: RunningServer, sid: str, user: str, text: str) -> str:
    """The side-thread a socket of ``user``'s opened and asked ``text`` in, answered."""
    client = await server.connect(sid, user)
    opened = await client.command({"type": "thread_open", "id": "t", "title": "mine"})
    thread_id: str = opened["thread_id"]
    asked = {"type": "thread_prompt", "id": "q", "thread_id": thread_id, "text": text}
    await client.command(asked)
    await client.wait_until(lambda c: answered(c, thread_id, 1))
    return thread_id


async def test_a_socket_opened_speaking_commands_is_told_its_side_threads(
    server: RunningServer,
) -> None:
    """Review (SDKs): an SDK reconnected while its side-thread reply ended never learned
    that it had. A socket opened with ``commands=`` is sent the state of its member's open
    side-threads before anything else asks for it; another member's socket is not."""
    sid = await server.new_session({"alice": "editor", "bob": "editor"})
    thread_id = await answered_thread(server, sid, "bob", "hi")
    again = await server.connect(sid, "bob", commands="text")
    await again.wait_until(lambda c: answered(c, thread_id, 1))
    alice = await server.connect(sid, "alice", commands="text")
    await alice.command({"type": "unpin", "id": "x", "entry_id": "none"})  # after any greeting
    assert thread_state(alice, thread_id) is None


def reads_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The read budget spent by reads alone: a run's fold of the history is paid from it
    too (``tests.server.runtime.test_side_threads``), more than these budgets hold."""
    monkeypatch.setattr(room_module, "BUILD_BYTES_PER_ENTRY", 0)


async def test_reading_a_side_thread_spends_the_read_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review (bounded): reads of a member's side-threads loaded every turn's text of every
    thread and spent nothing: 16 at once held an innocent client 1.8 s. A thread read
    loads that thread alone and spends its text's bytes; the list loads no text."""
    reads_alone(monkeypatch)
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", read_bytes_per_s=1.0, read_burst_bytes=600
    )
    async with serve_in_process(settings, MODEL) as server:
        sid = await server.new_session({"bob": "editor"})
        thread_id = await answered_thread(server, sid, "bob", "x" * 400)
        token = await server.token(sid, "bob")
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}
        ) as as_bob:
            base = f"/api/v1/sessions/{sid}/threads"
            listed = await as_bob.get(base)
            assert listed.status_code == 200 and listed.json()["threads"][0]["turns"] == 2
            first = await as_bob.get(f"{base}/{thread_id}")
            assert first.status_code == 200 and len(first.json()["turns"][0]["text"]) == 400
            again = await as_bob.get(f"{base}/{thread_id}")
            assert again.status_code == 429 and again.json()["error"]["code"] == "rate_limited"
            # The list spends the same budget by its bytes (review RL-2: one rule for
            # every read of a list made anew).
            refused = await as_bob.get(base)
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1


async def greeted_of_two_threads(settings: Settings, text: str) -> tuple[list[str], list[str]]:
    """bob opens two side-threads, asking ``text`` in each, and connects again speaking
    commands: (his threads, oldest first; those his new socket was greeted with)."""
    async with serve_in_process(settings, MODEL) as server:
        sid = await server.new_session({"bob": "editor"})
        bob = await server.connect(sid, "bob")
        threads = []
        for n in range(2):
            opened = await bob.command({"type": "thread_open", "id": f"t{n}", "title": f"{n}"})
            thread_id = opened["thread_id"]
            asked = {"type": "thread_prompt", "id": f"q{n}", "thread_id": thread_id}
            await bob.command({**asked, "text": text})
            await bob.wait_until(lambda c, t=thread_id: answered(c, t, 1))
            threads.append(thread_id)
        again = await server.connect(sid, "bob", commands="text")
        await again.command({"type": "unpin", "id": "x", "entry_id": "none"})  # after it
        greeted = [f["thread"]["id"] for f in again.unsolicited if f.get("type") == "thread"]
    return threads, greeted


async def test_the_greeting_spends_the_read_budget_most_lately_active_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of the greeting: each connect sent every open thread's whole text, a
    reconnect flood 1.2 GB in 8 s. It spends the member's read budget and stops there,
    the most lately active thread first."""
    reads_alone(monkeypatch)
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", read_bytes_per_s=1.0, read_burst_bytes=600
    )
    threads, greeted = await greeted_of_two_threads(settings, "x" * 400)
    assert greeted == [threads[1]]


async def test_the_greeting_stays_well_inside_the_sockets_backlog_limit(
    tmp_path: Path,
) -> None:
    """Review of the greeting: its read budget's burst (16 MiB) is twice the socket's
    backlog limit (8 MiB), so a member's first connect could be greeted past it and
    dropped, then again at each try. The greeting stops before half the limit: of two
    threads that fill it, the most lately active alone is sent."""
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d", send_buffer_max_bytes=65536)
    threads, greeted = await greeted_of_two_threads(settings, "x" * 20_000)
    assert greeted == [threads[1]]


async def test_the_greeting_spends_its_frames_bytes_as_a_rest_read_does(tmp_path: Path) -> None:
    """Review FX21: a socket's greeting spent its threads' characters where a REST read
    of a thread spends its answer's bytes (RJ-2): a CJK thread, sent as ``\\uXXXX``
    escapes, cost a sixth of what it sent. It spends the bytes of the frames sent."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", read_bytes_per_s=0.001, read_burst_bytes=10**6
    )
    async with serve_in_process(settings, MODEL) as server:
        sid = await server.new_session({"bob": "editor"})
        thread_id = await answered_thread(server, sid, "bob", "漢" * 2000)
        room = await server.app.state.parley.rooms.get(sid)

        def left() -> float:
            now = room.clock()
            return float(room.budgets.bucket("bob", Spend.READ_BYTES, now).left(now))

        before = left()
        again = await server.connect(sid, "bob", commands="text")
        await again.command({"type": "unpin", "id": "x", "entry_id": "none"})  # after it
        frames = [f for f in again.unsolicited if f.get("type") == "thread"]
        assert [f["thread"]["id"] for f in frames] == [thread_id]
        sent = len(json.dumps(frames[0]).encode())
        assert sent > 6 * 2000
        assert before - left() == pytest.approx(sent, abs=1)


async def bob_halfway(server: RunningServer, halfway: asyncio.Event) -> tuple[str, str]:
    """A session with bob's side-thread, its reply streamed up to ``halfway`` ("one two "
    shown to his socket): the session's id and the thread's."""
    sid = await server.new_session({"bob": "editor"})
    bob = await server.connect(sid, "bob")
    opened = await bob.command({"type": "thread_open", "id": "t", "title": "mine"})
    thread_id = opened["thread_id"]
    asked = {"type": "thread_prompt", "id": "q", "thread_id": thread_id, "text": "hi"}
    await bob.command(asked)
    async with asyncio.timeout(10):
        await halfway.wait()
    await bob.wait_until(
        lambda c: (
            "".join(f["text"] for f in c.unsolicited if f.get("type") == "thread_delta")
            == "one two "
        )
    )
    return sid, thread_id


async def test_a_socket_that_connects_mid_reply_gets_the_text_so_far_then_the_rest(
    tmp_path: Path,
) -> None:
    """Review (SDKs): a socket that connected while a side-thread's reply streamed got the
    thread as stored (no reply yet) and then the deltas after it: the reply's text held
    by the client lacked what had streamed before. It is greeted with one delta of the
    text so far, from offset 0, and every delta names its offset, so the text is whole."""
    halfway = asyncio.Event()
    go_on = asyncio.Event()

    async def reached() -> None:
        halfway.set()

    model = FakeModel(lambda _sent: ["one ", "two ", reached, go_on, "three ", "four"])
    async with serve_in_process(make_settings(sqlite_url(tmp_path), tmp_path / "d"), model) as s:
        sid, thread_id = await bob_halfway(s, halfway)
        again = await s.connect(sid, "bob", commands="text")
        await again.command({"type": "unpin", "id": "x", "entry_id": "none"})  # after it
        go_on.set()
        await again.wait_until(lambda c: answered(c, thread_id, 1))
        deltas = [f for f in again.unsolicited if f.get("type") == "thread_delta"]
        assert (deltas[0]["offset"], deltas[0]["text"]) == (0, "one two ")
        text = ""
        for delta in deltas:
            assert delta["offset"] <= len(text)
            text = text[: delta["offset"]] + delta["text"]
        assert text == "one two three four"
        reply = thread_state(again, thread_id)["turns"][-1]  # type: ignore[index]
        assert reply["text"] == text


async def test_a_side_thread_read_spends_its_answers_bytes_and_a_refused_one_loads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review RJ-2: a thread read loaded every turn before it was charged (a refused read
    cost the full load), and was charged its characters: a thread of CJK text was
    answered with three times what it spent. It spends its answer's bytes, and one
    refused loads nothing."""
    burst = 10_000
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", read_bytes_per_s=0.001, read_burst_bytes=burst
    )
    async with serve_in_process(settings, MODEL) as server:
        sid = await server.new_session({"bob": "editor"})
        thread_id = await answered_thread(server, sid, "bob", "漢" * 2000)
        state = server.app.state.parley
        loads: list[str] = []
        load_threads = state.store.load_threads

        async def counted(*args: Any, **kwargs: Any) -> Any:
            loads.append(str(kwargs.get("thread_id")))
            return await load_threads(*args, **kwargs)

        monkeypatch.setattr(state.store, "load_threads", counted)
        token = await server.token(sid, "bob")
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}
        ) as as_bob:
            path = f"/api/v1/sessions/{sid}/threads/{thread_id}"
            first = await as_bob.get(path)
            assert first.status_code == 200 and len(first.json()["turns"][0]["text"]) == 2000
            room = await state.rooms.get(sid)
            now = room.clock()
            left = room.budgets.bucket("bob", Spend.READ_BYTES, now).left(now)
            assert burst - left > len(first.content) - 1 > 6000  # its bytes, not its characters
            assert loads == [thread_id]
            assert (await as_bob.get(path)).status_code == 200  # what is left: into debt
            again = await as_bob.get(path)
            assert again.status_code == 429 and again.json()["error"]["code"] == "rate_limited"
            assert loads == [thread_id] * 2  # refused before the thread was loaded


async def bob_opens_a_thread(rooms: Any, room: Any) -> str:
    """Bob's new side-thread's id, opened through the room's command door."""
    opened = json.loads(
        await rooms.command(room, "bob", json.dumps({"type": "thread_open", "id": "t"}))
    )
    return str(opened["thread_id"])


async def bobs_turns_after_a_restart(
    settings: Settings, model: FakeModel, sid: str, thread_id: str
) -> list[dict[str, Any]]:
    """The turns of bob's side-thread as REST reads them on a server started again."""
    async with serve_in_process(settings, model) as again:
        token = await again.token(sid, "bob")
        read = await again.http.get(
            f"/api/v1/sessions/{sid}/threads/{thread_id}",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert read.status_code == 200, read.text
        return list(read.json()["turns"])


async def test_a_side_thread_reply_cut_by_a_shutdown_is_kept_as_a_session_reply_is(
    tmp_path: Path,
) -> None:
    """Review rv37 F2: past ``shutdown_grace_s`` a session run is stored ``interrupted``
    (``server_shutdown``, its text kept), but a side-thread run was only cancelled, and
    the next start failed it ``server_restart`` and dropped the text its owner watched
    stream. It ends at shutdown as a session run does."""
    halfway = asyncio.Event()

    async def reached() -> None:
        halfway.set()

    never = asyncio.Event()  # the model never finishes: the grace runs out
    model = FakeModel(lambda _sent: ["one ", "two ", reached, never, "three"])
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d", shutdown_grace_s=0.05)
    async with serve_in_process(settings, model) as s:
        sid, thread_id = await bob_halfway(s, halfway)
    prompt, reply = await bobs_turns_after_a_restart(settings, model, sid, thread_id)
    assert (prompt["status"], prompt["reason_code"]) == ("failed", "server_shutdown")
    assert (reply["kind"], reply["status"]) == ("reply", "interrupted")
    assert (reply["reason_code"], reply["text"]) == ("server_shutdown", "one two ")


async def test_a_side_thread_prompt_acked_as_the_drain_begins_is_marked_by_it(
    tmp_path: Path,
) -> None:
    """A side-thread prompt acked just before a drain began, its run's task not at its
    first step yet, was not among the runs the drain waited for and stopped: the unload
    cancelled it, and the next start failed it ``server_restart``. The drain sees it from
    the ack on and marks it ``server_shutdown``, as every run it stops."""
    model = FakeModel(lambda _sent: ["never shown"])
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings, model) as s:
        sid = await s.new_session({"bob": "editor"})
        rooms = s.app.state.parley.rooms
        room = await rooms.get(sid)
        thread_id = await bob_opens_a_thread(rooms, room)
        asked = {"type": "thread_prompt", "id": "q", "thread_id": thread_id, "text": "hi"}
        acked = json.loads(await rooms.command(room, "bob", json.dumps(asked)))
        assert acked["type"] == "ack", acked
        # No await between the ack and the drain: the run's task has not run yet. With no
        # grace, the drain stops what it sees at once; the unload comes right after.
        await rooms.drain(0)
        await rooms.close()
    turns = await bobs_turns_after_a_restart(settings, model, sid, thread_id)
    assert [(t["kind"], t["status"], t["reason_code"]) for t in turns] == [
        ("prompt", "failed", "server_shutdown"),
        ("reply", "interrupted", "server_shutdown"),
    ]


async def test_a_side_thread_prompt_stored_as_the_drain_begins_is_marked_by_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A side-thread prompt judged before a drain began and stored while it did was acked,
    but its run began after the drain had looked for runs in flight: the unload cancelled
    it. The drain waits for the writes under way first."""
    model = FakeModel(lambda _sent: ["never shown"])
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "d")
    async with serve_in_process(settings, model) as s:
        sid = await s.new_session({"bob": "editor"})
        rooms = s.app.state.parley.rooms
        room = await rooms.get(sid)
        thread_id = await bob_opens_a_thread(rooms, room)
        inside, go_on = asyncio.Event(), asyncio.Event()
        write = room.side_threads.write

        async def held(*args: Any) -> None:  # in the prompt's transaction
            inside.set()
            await go_on.wait()
            await write(*args)

        monkeypatch.setattr(room.side_threads, "write", held)
        asked = {"type": "thread_prompt", "id": "q", "thread_id": thread_id, "text": "hi"}
        sent = asyncio.create_task(rooms.command(room, "bob", json.dumps(asked)))
        async with asyncio.timeout(10):
            await inside.wait()
        drain_room, room_draining = room.drain, asyncio.Event()

        def drained() -> None:  # the drain began: the room takes no new prompt
            drain_room()
            room_draining.set()

        monkeypatch.setattr(room, "drain", drained)
        draining = asyncio.create_task(rooms.drain(0))
        async with asyncio.timeout(10):
            await room_draining.wait()
        go_on.set()
        acked = json.loads(await sent)
        assert acked["type"] == "ack", acked
        await draining
        await rooms.close()
    turns = await bobs_turns_after_a_restart(settings, model, sid, thread_id)
    assert [(t["kind"], t["status"], t["reason_code"]) for t in turns] == [
        ("prompt", "failed", "server_shutdown"),
        ("reply", "interrupted", "server_shutdown"),
    ]
