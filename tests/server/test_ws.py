"""The WebSocket endpoint: handshake refusals, commands, bad input, read-only document."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import weakref
from pathlib import Path

import pytest
import websockets
from pycrdt import Array, Doc, Map, Text

from parley.server.settings import Settings
from parley.session.yprotocol import (
    AwarenessState,
    SyncType,
    encode_awareness,
    encode_awareness_update,
    encode_sync,
    write_var_uint,
)
from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.garbage import cyclic_garbage
from tests.yclient import YClient, all_replies_settled


async def close_code_of(url: str) -> int | None:
    async with websockets.connect(url) as ws:
        try:
            async with asyncio.timeout(5):
                await ws.recv()
        except websockets.ConnectionClosed:
            pass
        return ws.close_code


async def test_handshake_refusals(sqlite_server: RunningServer) -> None:
    server = sqlite_server
    sid = await server.new_session({"alice": "editor"})
    other = await server.new_session({"alice": "editor"})
    token = await server.token(sid, "alice")
    assert await close_code_of(f"{server.ws_url}/ws/sessions/{sid}?token=garbage") == 4401
    assert await close_code_of(f"{server.ws_url}/ws/sessions/{sid}") == 4401
    assert await close_code_of(f"{server.ws_url}/ws/sessions/{other}?token={token}") == 4401
    await server.http.delete(f"/api/v1/sessions/{sid}/members/alice")
    assert await close_code_of(f"{server.ws_url}/ws/sessions/{sid}?token={token}") == 4403


async def test_unknown_session_closes_4404(sqlite_server: RunningServer) -> None:
    sid = await sqlite_server.new_session({"alice": "editor"})
    token = await sqlite_server.token(sid, "alice")
    await sqlite_server.http.delete(f"/api/v1/sessions/{sid}")
    url = f"{sqlite_server.ws_url}/ws/sessions/{sid}?token={token}"
    assert await close_code_of(url) == 4404


async def test_expired_token_closes_4401(sqlite_server: RunningServer) -> None:
    sid = await sqlite_server.new_session({"alice": "editor"})
    token = await sqlite_server.token(sid, "alice", ttl_seconds=1)
    client = await YClient.connect(sqlite_server.ws_url, sid, token)
    sqlite_server.clients.append(client)
    assert await client.wait_closed(timeout=5) == 4401
    assert await close_code_of(f"{sqlite_server.ws_url}/ws/sessions/{sid}?token={token}") == 4401


async def test_an_open_socket_is_judged_by_the_clock_every_door_uses(
    sqlite_server: RunningServer,
) -> None:
    """Review (faults): a socket's token expiry ran on the loop's clock, set when it
    opened, so after the wall clock stepped forward past the expiry the open socket kept
    getting acks on a token a new socket was refused (4401). Each frame is judged by the
    same clock as the other doors."""
    sid = await sqlite_server.new_session({"alice": "editor"})
    token = await sqlite_server.token(sid, "alice", ttl_seconds=3600)
    alice = await YClient.connect(sqlite_server.ws_url, sid, token)
    sqlite_server.clients.append(alice)
    assert (await alice.command({"type": "message", "id": "m1", "text": "hi"}))["type"] == "ack"
    state = sqlite_server.app.state.parley
    wall = state.clock
    state.clock = lambda: wall() + 7200  # two hours on: the token's hour is over
    try:
        await alice.send_raw(json.dumps({"type": "message", "id": "m2", "text": "later"}))
        assert await alice.wait_closed(timeout=10) == 4401
        assert (
            await close_code_of(f"{sqlite_server.ws_url}/ws/sessions/{sid}?token={token}") == 4401
        )
    finally:
        state.clock = wall


async def test_prompt_streams_reply_to_every_member(server: RunningServer) -> None:
    sid = await server.new_session({"alice": "editor", "bob": "viewer"})
    alice = await server.connect(sid, "alice")
    bob = await server.connect(sid, "bob")
    reply = await alice.command({"type": "prompt", "id": "c1", "text": "What is Parley?"})
    assert reply["type"] == "ack" and reply["id"] == "c1" and reply["seq"] == 1
    prompt_id = reply["prompt_id"]
    await bob.wait_until(lambda c: all_replies_settled(c, 1))
    entries = bob.entries()
    assert [e["kind"] for e in entries] == ["prompt", "reply"]
    prompt, answer = entries
    assert prompt["id"] == prompt_id and prompt["author"] == "alice"
    assert prompt["status"] == "done" and prompt["reply_id"] == answer["id"]
    assert answer["reply_to"] == prompt_id and answer["status"] == "done"
    assert answer["role"] == "assistant" and "Hello alice" in answer["content"]
    assert "What is Parley?" in answer["content"]
    assert bob.unsolicited == []  # a client that sends no text frame gets none


async def test_bad_commands_get_errors_and_the_socket_stays_open(
    sqlite_server: RunningServer,
) -> None:
    server = sqlite_server
    sid = await server.new_session({"alice": "editor", "vera": "viewer"})
    alice = await server.connect(sid, "alice")
    vera = await server.connect(sid, "vera")

    # Each command's error code is the core's (``tests/server/runtime/test_commands.py``);
    # here: a refused or broken frame is answered and the socket stays open.
    refused = await vera.command({"type": "prompt", "id": "v", "text": "hi"})
    assert (refused["type"], refused["code"]) == ("error", "forbidden")
    unknown = await alice.command({"type": "dance", "id": "d"})
    assert (unknown["type"], unknown["code"]) == ("error", "unknown_command")
    await alice.send_raw("{not json")
    await alice.wait_until(lambda c: len(c.unsolicited) == 1, timeout=5)
    assert alice.unsolicited[0]["code"] == "invalid" and alice.unsolicited[0]["id"] is None
    ok = await alice.command({"type": "prompt", "id": "ok", "text": "still here?"})
    assert ok["type"] == "ack" and ok["seq"] == 1  # nothing was stored for the bad ones
    transcript = await server.transcript(sid)
    assert transcript[0]["content"] == "still here?"
    assert [m["seq"] for m in transcript if m["kind"] != "reply"] == [1]


async def test_malformed_binary_frame_closes_only_that_socket(
    sqlite_server: RunningServer,
) -> None:
    server = sqlite_server
    sid = await server.new_session({"alice": "editor", "bob": "editor"})
    alice = await server.connect(sid, "alice")
    bob = await server.connect(sid, "bob")
    await bob.send_raw(b"\x00\x02\xff\xff\xff")
    assert await bob.wait_closed() == 4400
    await alice.command({"type": "prompt", "id": "p", "text": "hello"})
    await alice.wait_until(lambda c: all_replies_settled(c, 1))


async def test_oversized_message_closes_with_1009(sqlite_server: RunningServer) -> None:
    server = sqlite_server
    sid = await server.new_session({"alice": "editor", "bob": "editor"})
    alice = await server.connect(sid, "alice")
    bob = await server.connect(sid, "bob")
    with contextlib.suppress(websockets.ConnectionClosed):
        await bob.send_raw(b"\x01" + b"\x00" * (5 * 1024 * 1024))
    assert await bob.wait_closed() == 1009
    ack = await alice.command({"type": "message", "id": "m", "text": "still fine"})
    assert ack["type"] == "ack"


async def test_client_writes_are_refused_and_never_relayed(server: RunningServer) -> None:
    sid = await server.new_session({"alice": "editor", "mallory": "editor"})
    alice = await server.connect(sid, "alice")
    mallory = await server.connect(sid, "mallory")
    await alice.command({"type": "prompt", "id": "p", "text": "hello"})
    await alice.wait_until(lambda c: all_replies_settled(c, 1))
    await mallory.wait_until(lambda c: all_replies_settled(c, 1))

    await mallory.command({"type": "message", "id": "hi", "text": "hello all"})
    await mallory.wait_until(lambda c: c.entries()[-1]["content"] == "hello all")
    forged: Doc = Doc()
    forged.apply_update(mallory.doc.get_update())
    before = forged.get_state()
    transcript = forged.get("transcript", type=Array)
    transcript.append(Map({"id": "forged", "kind": "reply", "content": Text("pwned")}))
    transcript[0]["status"] = "hacked"
    await mallory.send_raw(encode_sync(SyncType.UPDATE, forged.get_update(before)))
    await mallory.command({"type": "message", "id": "after", "text": "did it stick?"})
    refusal = [m for m in mallory.unsolicited if m.get("code") == "forbidden"]
    assert refusal, "a JSON-speaking client is told its write was refused"
    await alice.wait_until(lambda c: c.entries()[-1]["content"] == "did it stick?")
    for view in (alice.entries(), await server.transcript(sid)):
        assert all(e["id"] != "forged" for e in view)
        assert view[0]["status"] == "done"


async def test_a_stock_clients_writes_are_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that never sent a command cannot be told its write was dropped; the
    operator sees it instead: each socket's first write counted, one log line for many."""
    caplog.set_level(logging.INFO, logger="parley.ws")
    # Each ``_judged`` asks for a sync: room for them all within the socket's count.
    settings = make_settings(
        sqlite_url(tmp_path),
        tmp_path / "data",
        client_write_log_every_s=600,
        sync_requests_burst=10,
    )
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor", "sam": "editor"})
        alice = await server.connect(sid, "alice")
        await alice.command({"type": "message", "id": "m", "text": "hello"})
        sam = await server.connect(sid, "sam")
        await sam.wait_until(lambda c: len(c.entries()) == 1)
        echo = sam.doc.get_update()  # what the server sent it: no write
        forged: Doc = Doc()
        forged.apply_update(echo)
        before = forged.get_state()
        forged.get("transcript", type=Array)[0]["content"] = "edited"
        write = encode_sync(SyncType.UPDATE, forged.get_update(before))

        await _judged(sam, encode_sync(SyncType.UPDATE, echo))
        assert _refused_writes(server, "stock") == 0
        await _judged(sam, write, write)  # one socket: counted once
        again = await server.connect(sid, "sam")
        await _judged(again, write)
        await alice.command({"type": "message", "id": "n", "text": "told"})
        await _judged(alice, write)
        assert _refused_writes(server, "stock") == 2
        assert _refused_writes(server, "json") == 1
        metrics = (await server.http.get("/metrics")).text
        assert 'parley_client_writes_refused_total{client="stock"} 2.0' in metrics
        lines = [r for r in caplog.records if r.getMessage() == "client write dropped"]
        assert [(r.user_id, r.session_id) for r in lines] == [("sam", sid)]  # type: ignore[attr-defined]
        assert (await server.transcript(sid))[0]["content"] == "hello"
        assert sam.close_code is None and again.close_code is None


async def _judged(client: YClient, *frames: bytes) -> None:
    """Send ``frames``, then a sync step 1, and wait for its answer: the socket's frames
    are handled in order, so the ones before it were judged by then."""
    answers = client.sync_answers
    for frame in frames:
        await client.send_raw(frame)
    await client.send_raw(encode_sync(SyncType.STEP1, client.doc.get_state()))
    await client.wait_until(lambda c: c.sync_answers > answers)


def _refused_writes(server: RunningServer, client: str) -> float:
    registry = server.app.state.parley.metrics.registry
    value = registry.get_sample_value("parley_client_writes_refused_total", {"client": client})
    return value or 0.0


async def test_presence_is_relayed_with_the_verified_user(sqlite_server: RunningServer) -> None:
    server = sqlite_server
    sid = await server.new_session({"alice": "editor", "vera": "viewer"})
    alice = await server.connect(sid, "alice")
    vera = await server.connect(sid, "vera")
    await vera.set_awareness(777, 1, {"user": {"name": "Vera"}, "typing": True})
    await alice.wait_until(lambda c: 777 in c.awareness)
    state = alice.awareness[777]
    assert state is not None and state["parley"] == {"user_id": "vera"} and state["typing"]
    await vera.wait_until(lambda c: 777 in c.awareness)  # echoed to the sender too
    await vera.set_awareness(12345, 1, {"user": {"name": "spoof"}})
    await alice.set_awareness(777, 5, {"user": {"name": "not vera"}})
    # A marker after the spoof on the same socket: once it is relayed, the spoof was judged.
    await alice.set_awareness(999, 1, {"user": {"name": "Alice"}})
    await alice.wait_until(lambda c: 999 in c.awareness)
    assert alice.awareness[777] == state  # alice may not speak for vera's client
    await vera.close()
    await alice.wait_until(lambda c: c.awareness.get(777, {}) is None)


async def test_session_deletion_and_removal_close_sockets(sqlite_server: RunningServer) -> None:
    server = sqlite_server
    sid = await server.new_session({"alice": "editor", "bob": "editor"})
    alice = await server.connect(sid, "alice")
    bob = await server.connect(sid, "bob")
    await server.http.delete(f"/api/v1/sessions/{sid}/members/bob")
    assert await bob.wait_closed() == 4403
    await server.http.delete(f"/api/v1/sessions/{sid}")
    assert await alice.wait_closed() == 4404


async def test_json_is_sent_only_to_clients_that_speak_it(sqlite_server: RunningServer) -> None:
    server = sqlite_server
    sid = await server.new_session({"alice": "editor", "bob": "editor"})
    alice = await server.connect(sid, "alice")
    silent = await server.connect(sid, "bob")
    forged: Doc = Doc()
    forged.get("transcript", type=Array).append(Map({"id": "x"}))
    await silent.send_raw(encode_sync(SyncType.UPDATE, forged.get_update()))
    await alice.command({"type": "prompt", "id": "p", "text": "hi"})
    await silent.wait_until(lambda c: all_replies_settled(c, 1))
    assert silent.unsolicited == [] and not silent.replies
    assert all(json.dumps(e) for e in silent.entries())


async def test_presence_needs_be_present(sqlite_server: RunningServer) -> None:
    server = sqlite_server
    sid = await server.new_session({"alice": "editor", "vera": "viewer"})
    await server.http.put(
        f"/api/v1/sessions/{sid}/members/lena", json={"role": "viewer", "denials": ["be_present"]}
    )
    alice = await server.connect(sid, "alice")
    vera = await server.connect(sid, "vera")
    lena = await server.connect(sid, "lena")
    await vera.set_awareness(7, 1, {"user": {"name": "Vera"}})
    await lena.wait_until(lambda c: 7 in c.awareness)  # lena still sees the others

    # lena reads JSON, so she is told; nobody is shown her state.
    assert (await lena.command({"type": "cancel", "id": "c", "prompt_id": "x"}))["type"] == "error"
    await lena.set_awareness(9, 1, {"user": {"name": "Lena"}})
    await lena.wait_until(lambda c: any(u.get("code") == "forbidden" for u in c.unsolicited))
    await alice.set_awareness(5, 1, {"user": {"name": "Alice"}})
    await alice.wait_until(lambda c: 5 in c.awareness and 7 in c.awareness)
    assert 9 not in alice.awareness
    late = await server.connect(sid, "alice")
    await late.set_awareness(6, 1, {"user": {"name": "Alice again"}})
    await late.wait_until(lambda c: 6 in c.awareness)
    assert 9 not in late.awareness and {5, 7} <= set(late.awareness)

    # Taking the capability away also takes down the state shown before.
    put = await server.http.put(
        f"/api/v1/sessions/{sid}/members/vera", json={"role": "viewer", "denials": ["be_present"]}
    )
    assert put.status_code == 200
    await vera.set_awareness(7, 2, {"user": {"name": "Vera"}, "typing": True})
    await alice.wait_until(lambda c: c.awareness.get(7, {}) is None)


async def test_a_silent_member_who_may_no_longer_be_present_is_taken_down(
    sqlite_server: RunningServer,
) -> None:
    """Review: a member denied ``be_present`` who sent no more presence kept showing their
    state to every newcomer, and in query-awareness answers, for as long as their socket
    lived. Now a change of grants takes it down at once, whichever way it came: a deny of
    the member's own, or their custom role edited."""
    server = sqlite_server
    defined = await server.http.put(
        "/api/v1/roles/watcher", json={"capabilities": ["read_session", "be_present"]}
    )
    assert defined.status_code == 200, defined.text
    sid = await server.new_session({"alice": "editor", "mal": "editor", "wes": "watcher"})
    alice = await server.connect(sid, "alice")
    mal = await server.connect(sid, "mal")
    wes = await server.connect(sid, "wes")
    await mal.set_awareness(42, 1, {"user": {"name": "Mal"}})
    await wes.set_awareness(43, 1, {"user": {"name": "Wes"}})
    await alice.wait_until(lambda c: bool(c.awareness.get(42)) and bool(c.awareness.get(43)))

    put = await server.http.put(
        f"/api/v1/sessions/{sid}/members/mal", json={"role": "editor", "denials": ["be_present"]}
    )
    assert put.status_code == 200, put.text
    await alice.wait_until(lambda c: 42 in c.awareness and c.awareness[42] is None)
    late = await server.connect(sid, "alice")
    await late.wait_until(lambda c: 43 in c.awareness)  # the snapshot, one frame
    assert 42 not in late.awareness

    edited = await server.http.put("/api/v1/roles/watcher", json={"capabilities": ["read_session"]})
    assert edited.status_code == 200, edited.text
    await alice.wait_until(lambda c: 43 in c.awareness and c.awareness[43] is None)
    await late.wait_until(lambda c: c.awareness.get(43, {}) is None)
    # Both sockets stay open, and see the others.
    await alice.set_awareness(5, 1, {"user": {"name": "Alice"}})
    for socket in (mal, wes):
        await socket.wait_until(lambda c: bool(c.awareness.get(5)))


async def test_a_member_who_may_not_be_present_is_told_once(sqlite_server: RunningServer) -> None:
    """Review (SDKs): a member without ``be_present`` whose client renews its state every
    15 s was sent the same ``forbidden`` error each time, which the SDKs collected and the
    demo showed again and again. A socket is told once; its renewals are answered with an
    update of no states (which keeps a stock client's socket open) and nothing else."""
    server = sqlite_server
    sid = await server.new_session({"alice": "editor"})
    await server.http.put(
        f"/api/v1/sessions/{sid}/members/lena", json={"role": "viewer", "denials": ["be_present"]}
    )
    lena = await server.connect(sid, "lena")
    assert (await lena.command({"type": "cancel", "id": "c", "prompt_id": "x"}))["type"] == "error"
    for clock in range(1, 4):
        await lena.set_awareness(9, clock, {"user": {"name": "Lena"}})
    # Frames are answered in order: once this is, every renewal before it was.
    assert (await lena.command({"type": "cancel", "id": "d", "prompt_id": "x"}))["type"] == "error"
    assert [u.get("code") for u in lena.unsolicited].count("forbidden") == 1


async def test_a_member_who_may_not_be_present_may_echo_the_others(
    sqlite_server: RunningServer,
) -> None:
    """Stock y-websocket re-sends every awareness state it receives, as often as the others'
    presence changes; a member without ``be_present`` shows nothing by that, nor by taking
    their own state away, and is neither answered nor cut off for it (review: each echo was
    refused and counted, and a stock client was closed 4429 within seconds)."""
    server = sqlite_server
    sid = await server.new_session({"alice": "editor"})
    await server.http.put(
        f"/api/v1/sessions/{sid}/members/lena", json={"role": "viewer", "denials": ["be_present"]}
    )
    alice = await server.connect(sid, "alice")
    lena = await server.connect(sid, "lena")
    assert (await lena.command({"type": "cancel", "id": "c", "prompt_id": "x"}))["type"] == "error"
    echoes = 80  # past the abuse limit (50 refusals in 10 s) had they been refused
    for clock in range(1, echoes + 1):
        state = {"user": {"name": "Alice"}, "cursor": clock}
        await alice.set_awareness(5, clock, state)
        await lena.set_awareness(5, clock, state)  # the echo
    await lena.set_awareness(9, 1, None)  # her own state taken away: shows nothing
    await lena.wait_until(lambda c: (c.awareness.get(5) or {}).get("cursor") == echoes)
    answer = await lena.command({"type": "cancel", "id": "c2", "prompt_id": "x"})
    assert answer["type"] == "error" and answer["id"] == "c2", answer  # answered: still open
    assert not any(u.get("code") == "forbidden" for u in lena.unsolicited)
    assert 9 not in alice.awareness


async def test_a_member_who_may_not_be_present_alone_is_answered(
    sqlite_server: RunningServer,
) -> None:
    """Review (stock clients): a stock client closes a socket that hears nothing for 30 s,
    and a present member alone hears their own state relayed; a member without
    ``be_present``, alone in a quiet session, heard nothing back, so their client closed
    and synced the whole document again every 33 s. Their state is answered with an
    update of no states."""
    server = sqlite_server
    sid = await server.new_session({"alice": "editor"})
    await server.http.put(
        f"/api/v1/sessions/{sid}/members/lena", json={"role": "viewer", "denials": ["be_present"]}
    )
    lena = await server.connect(sid, "lena")
    before = lena.awareness_frames
    await lena.set_awareness(9, 1, {"user": {"name": "Lena"}})
    await lena.wait_until(lambda c: c.awareness_frames > before)
    assert lena.awareness == {}  # told nothing of anyone


async def test_a_socket_that_shows_nothing_in_a_quiet_session_still_hears_something(
    tmp_path: Path,
) -> None:
    """Review (stock clients): a stock client with no state of its own (an app that set
    its awareness to null) renews nothing, and in a quiet session heard nothing back: its
    watchdog dropped the socket and synced the whole document again every 30 s (pings do
    not count for it). An awareness update of no states goes beside each ping."""
    settings = make_settings(
        sqlite_url(tmp_path), tmp_path / "d", ws_ping_interval_s=0.2, ws_ping_timeout_s=10
    )
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor", "vera": "viewer"})
        token = await server.token(sid, "vera")
        url = f"{server.ws_url}/ws/sessions/{sid}?token={token}"
        no_states = encode_awareness(encode_awareness_update([]))
        async with websockets.connect(url) as vera:
            await vera.send(encode_sync(SyncType.STEP1, b"\x00"))
            heard = 0
            async with asyncio.timeout(30):
                while heard < 3:  # three pings' worth, with nothing else going on
                    heard += await vera.recv() == no_states


async def test_presence_at_a_cursors_rate_is_not_cut_off(sqlite_server: RunningServer) -> None:
    """A stock client sends its awareness each time it changes: a shared cursor at the
    display's rate. Those frames count a quarter against the socket's frame rate, so 600 in
    a row (over the burst of 200 counted whole: 4429 before) all go through."""
    server = sqlite_server
    sid = await server.new_session({"alice": "editor", "bob": "editor"})
    alice = await server.connect(sid, "alice")
    bob = await server.connect(sid, "bob")
    moves = 600
    for clock in range(1, moves + 1):
        await alice.set_awareness(5, clock, {"cursor": clock})
    await bob.wait_until(lambda c: (c.awareness.get(5) or {}).get("cursor") == moves)
    answer = await alice.command({"type": "cancel", "id": "c", "prompt_id": "x"})
    assert answer["id"] == "c"  # still open


async def test_echoes_of_the_others_presence_cost_no_presence_budget(tmp_path: Path) -> None:
    """A stock client re-sends every state it receives: in a busy room those echoes alone
    went past the member's presence budget, each refused and counted, and the socket was
    closed 4429 (review). A socket may send back free twice what it was sent (a stock
    client writes numbers as JavaScript does, longer than Python); past that (forged
    "echoes" of states it never received) its member pays, as for its own."""
    settings = tight_presence(tmp_path, 12_000)
    async with serve_in_process(settings) as server:
        senders, bob = await presence_room(server)
        for clock in range(1, 11):  # 30 states of about 1 kB: 2.5 times bob's budget
            for n, sender in enumerate(senders):
                state = {"note": "n" * 1000, "clock": clock}
                await sender.set_awareness(n, clock, state)
                await bob.wait_until(
                    lambda c, n=n, k=clock: (c.awareness.get(n) or {}).get("clock") == k
                )
                await bob.set_awareness(n, clock, bob.awareness[n])  # the echo, as stock do
        await bob.set_awareness(7, 1, {"user": "bob"})  # his own, within his budget
        await senders[0].wait_until(lambda c: 7 in c.awareness)
        assert not any(u.get("code") == "rate_limited" for u in bob.unsolicited)
        for _ in range(60):  # "echoes" of what he was never sent: paid, and refused
            await bob.set_awareness(0, 1, {"note": "x" * 1000})
        await bob.wait_until(lambda c: any(u.get("code") == "rate_limited" for u in c.unsolicited))
        assert bob.close_code is None


async def test_a_members_sockets_earn_each_other_no_echo_credit(tmp_path: Path) -> None:
    """Review (bounded): echo credit left out only a socket's own states, so a member's two
    sockets earned each other credit with every state they showed, and paid their new
    states with it: 15 MB/s past the presence budget from 16 sockets, every other socket
    sent all of it. A member's own states, from any socket of theirs, earn none."""
    settings = tight_presence(tmp_path, 12_000)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"mal": "editor", "vic": "viewer"})
        one, two = [await server.connect(sid, "mal") for _ in range(2)]
        for socket in (one, two):
            assert await socket.command({"type": "cancel", "id": "c", "prompt_id": "x"})

        def refused(_: YClient) -> bool:
            return any(u.get("code") == "rate_limited" for u in one.unsolicited + two.unsolicited)

        for clock in range(1, 40):  # 1 kB of new state a socket a turn: 6 times the budget
            for n, socket in enumerate((one, two)):
                await socket.set_awareness(n, clock, {"note": "m" * 1000, "clock": clock})
                await socket.wait_until(  # its state relayed, or refused: both come to it
                    lambda c, n=n, k=clock: (
                        refused(c) or k == (c.awareness.get(n) or {}).get("clock")
                    )
                )
            if refused(one):
                break
        assert refused(one), "a member's new states went past the presence budget, unrefused"


async def test_an_echo_of_a_big_greeting_is_dropped_unanswered(
    sqlite_server: RunningServer,
) -> None:
    """Review (stock clients): ten members' legal 15 kB states make a greeting of 150 kB,
    which a stock client (and the JS SDK's provider) echoes back in one frame; the echo was
    refused ``too_large``, judged against the bound of a socket's own states, then
    ``rate_limited``, the credit spent on the refused echoes. Echoes are dropped unanswered
    and free, from a member who may show presence or one who may not."""
    server = sqlite_server
    members = {"alice": "editor", "bob": "editor", "dave": "editor"}
    sid = await server.new_session(members)
    await server.http.put(
        f"/api/v1/sessions/{sid}/members/lena", json={"role": "viewer", "denials": ["be_present"]}
    )
    senders = [await server.connect(sid, user) for user in ("bob", "dave")]
    states = {n: {"user": {"name": f"m{n}"}, "blob": "b" * 15_000} for n in range(10)}
    for k, sender in enumerate(senders):  # a socket shows its clients in its first update
        own = [AwarenessState(100 + n, 1, state) for n, state in states.items() if n % 2 == k]
        await sender.send_raw(encode_awareness(encode_awareness_update(own)))
    await senders[0].wait_until(lambda c: all(100 + n in c.awareness for n in states))
    for user in ("alice", "lena"):
        joiner = await server.connect(sid, user, commands="text")
        await joiner.wait_until(lambda c: all(100 + n in c.awareness for n in states))
        greeting = encode_awareness_update(
            [AwarenessState(100 + n, 1, joiner.awareness[100 + n]) for n in states]
        )
        assert len(greeting) > 150_000
        for _ in range(2):  # the greeting's echo, and the next flush's, say
            await joiner.send_raw(encode_awareness(greeting))
        answer = await joiner.command({"type": "cancel", "id": "c", "prompt_id": "x"})
        assert answer["id"] == "c"  # frames are answered in order: every echo was judged
        assert joiner.unsolicited == [], joiner.unsolicited


async def test_a_cursor_shared_past_the_presence_budget_is_dropped_not_cut_off(
    tmp_path: Path,
) -> None:
    """Review RE F2: a stock client sharing a 1 kB cursor at mouse rate went past its
    member's presence budget every second; each state refused counted toward the abuse
    limit, and 4429 (final for y-websocket 3.x) cut it off for good after about 12 s.
    States past the budget are dropped: a socket that speaks JSON is told once, until a
    state is shown again; neither socket counts them, so both stay and go on receiving."""
    settings = tight_presence(tmp_path, 12_000)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor", "carol": "editor", "olga": "owner"})
        told = await server.connect(sid, "alice")
        assert await told.command({"type": "cancel", "id": "c", "prompt_id": "x"})
        stock = await server.connect(sid, "carol")  # never sends a command: no JSON
        for clock in range(1, 121):  # 120 kB of new states: ten times the budget, and past
            for n, socket in ((1, told), (2, stock)):  # the 50 refusals that cut one off
                await socket.set_awareness(n, clock, {"cursor": clock, "pad": "p" * 1000})
        ack = await told.command({"type": "message", "id": "m", "text": "after the cursor"})
        assert ack["type"] == "ack"
        await stock.wait_until(lambda c: c.entries()[-1]["content"] == "after the cursor")
        assert told.close_code is None and stock.close_code is None
        codes = [u.get("code") for u in told.unsolicited]
        # Told once, and again only after a state was shown (paid with echo credit, say).
        assert codes and set(codes) == {"rate_limited"} and len(codes) < 20, codes
        assert stock.unsolicited == []


def tight_presence(tmp_path: Path, burst_bytes: int) -> Settings:
    """A presence budget of ``burst_bytes`` that hardly refills; every change relayed."""
    return make_settings(
        sqlite_url(tmp_path),
        tmp_path / "d",
        awareness_bytes_per_s=1.0,
        awareness_burst_bytes=burst_bytes,
        awareness_flush_ms=0.0,
    )


async def presence_room(server: RunningServer) -> tuple[list[YClient], YClient]:
    """Three members who show presence, and bob, who echoes it (his socket speaks JSON)."""
    sid = await server.new_session(dict.fromkeys(("alice", "carol", "dave", "bob"), "editor"))
    senders = [await server.connect(sid, user) for user in ("alice", "carol", "dave")]
    bob = await server.connect(sid, "bob")
    assert (await bob.command({"type": "cancel", "id": "c", "prompt_id": "x"}))["id"] == "c"
    return senders, bob


async def test_a_members_own_states_are_paid_from_their_presence_budget(
    tmp_path: Path,
) -> None:
    """Review (bounded): every socket was given echo credit for all the presence the
    session sent, its member's own states included, so a member sending their own large
    states was credited about twice what they sent and never paid: 18.6 MB in 16 s
    against a budget of 0.8 MB. A socket's own states give it no credit."""
    settings = tight_presence(tmp_path, 4000)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor", "bob": "editor"})
        alice = await server.connect(sid, "alice")
        bob = await server.connect(sid, "bob")
        assert (await alice.command({"type": "cancel", "id": "c", "prompt_id": "x"}))["id"] == "c"
        for clock in range(1, 13):  # 12 states of about 1 kB: three times her budget
            await alice.set_awareness(5, clock, {"note": "n" * 1000, "clock": clock})
        await alice.wait_until(
            lambda c: any(u.get("code") == "rate_limited" for u in c.unsolicited)
        )
        assert bob.close_code is None


def js_written(state: dict[str, object]) -> bytes:
    """``state`` as JavaScript's JSON.stringify writes it: 1e-06 as 0.000001."""
    return json.dumps(state, separators=(",", ":")).replace("1e-06", "0.000001").encode()


async def test_an_echo_written_as_javascript_writes_it_costs_no_presence_budget(
    tmp_path: Path,
) -> None:
    """Review (bounded): a stock client writes the numbers it echoes as JavaScript does,
    up to 1.6 times as long as the server wrote them (1e-06 is 0.000001); the excess was
    charged to its member's presence budget, which a crafted state ran out, and every
    stock client of the session was closed 4429. Echoes are free up to twice what was
    sent."""
    settings = tight_presence(tmp_path, 12_000)
    async with serve_in_process(settings) as server:
        senders, bob = await presence_room(server)
        users = ("alice", "carol", "dave")
        for clock in range(1, 11):  # 30 states of about 0.9 kB, echoed 1.5 times as long
            for n, sender in enumerate(senders):
                state = {"v": [1e-06] * 150, "clock": clock}
                await sender.set_awareness(n, clock, state)
                await bob.wait_until(
                    lambda c, n=n, k=clock: (c.awareness.get(n) or {}).get("clock") == k
                )
                body = js_written({**state, "parley": {"user_id": users[n]}})
                echo = b"".join(write_var_uint(v) for v in (1, n, clock, len(body))) + body
                await bob.send_raw(encode_awareness(echo))
        await bob.set_awareness(7, 1, {"user": "bob"})  # his own, within his budget
        await senders[0].wait_until(lambda c: 7 in c.awareness)
        assert not any(u.get("code") == "rate_limited" for u in bob.unsolicited)


async def test_a_client_id_just_left_is_kept_for_its_member(sqlite_server: RunningServer) -> None:
    """Stock clients keep their awareness client id across reconnects: another member may
    not take it over while its own member is away (between their sockets)."""
    server = sqlite_server
    sid = await server.new_session({"alice": "editor", "vera": "viewer", "mallory": "editor"})
    alice = await server.connect(sid, "alice")
    vera = await server.connect(sid, "vera")
    mallory = await server.connect(sid, "mallory")
    await vera.set_awareness(777, 1, {"user": {"name": "Vera"}})
    await mallory.wait_until(lambda c: 777 in c.awareness)
    await vera.close()
    await mallory.wait_until(lambda c: 777 in c.awareness and c.awareness[777] is None)
    await mallory.set_awareness(777, 50, {"user": {"name": "Vera"}})
    await mallory.set_awareness(555, 1, {"user": {"name": "Mallory"}})
    await alice.wait_until(lambda c: 555 in c.awareness)
    assert alice.awareness[777] is None
    back = await server.connect(sid, "vera")  # the same Y.Doc, so the same client id
    await back.set_awareness(777, 2, {"user": {"name": "Vera"}})
    await alice.wait_until(lambda c: (c.awareness.get(777) or {}).get("parley") is not None)
    assert alice.awareness[777] == {"user": {"name": "Vera"}, "parley": {"user_id": "vera"}}


async def test_command_bytes_are_budgeted_before_they_are_parsed(
    sqlite_server: RunningServer,
) -> None:
    """Parsing JSON costs its bytes (4 MiB of ``{}`` held the event loop for 0.1 s, and one
    member's frames delayed everyone's commands by seconds): a frame over the member's
    command bytes is refused unread, answered by its id (read from its ends)."""
    server = sqlite_server
    sid = await server.new_session({"alice": "editor"})
    alice = await server.connect(sid, "alice")
    for command_id, padded in [
        ("first", {"id": "first", "type": "message", "text": "hi", "pad": [{}] * 600_000}),
        ("last", {"type": "message", "text": "hi", "pad": [{}] * 600_000, "id": "last"}),
    ]:
        refused = await alice.command(padded)  # larger than the burst: it never passes
        assert (refused["id"], refused["code"]) == (command_id, "too_large"), refused
    # The longest text, every character escaped (\u0001), still goes.
    worst = await alice.command({"type": "message", "id": "long", "text": "\x01" * 32_000})
    assert worst["type"] == "ack", worst
    # Within the burst but over what is left of it: slow down (the ones before spent it;
    # one refused for its unknown field passed the budget, and spent its bytes).
    within = {"type": "message", "text": "hi", "pad": "x" * 700_000}
    spent = await alice.command({**within, "id": "spent"})
    assert (spent["id"], spent["code"]) == ("spent", "invalid"), spent
    over = await alice.command({**within, "id": "over"})
    assert (over["id"], over["code"]) == ("over", "rate_limited"), over


async def test_a_closed_socket_is_freed_without_the_garbage_collector(
    sqlite_server: RunningServer,
) -> None:
    """Its objects go as soon as its endpoint returns: left in reference cycles, every
    closed socket waited for the collector, whose passes stop the event loop for all the
    others (a reconnect storm of thousands). The collector is off while this waits."""
    server = sqlite_server
    sid = await server.new_session({"alice": "editor"})
    client = await server.connect(sid, "alice")
    assert (await client.command({"type": "message", "id": "m", "text": "hi"}))["type"] == "ack"
    room = server.app.state.parley.rooms.loaded(sid)
    (connection,) = room.connections
    assert connection.direct is not None
    protocol = weakref.ref(connection.direct._protocol)
    del connection
    gc.disable()
    try:
        await client.close()
        for _ in range(1000):
            if protocol() is None:
                break
            await asyncio.sleep(0.01)
        assert protocol() is None, "the socket's protocol outlived it (a cycle, or held)"
    finally:
        gc.enable()


async def test_the_http_protocol_a_socket_was_upgraded_from_is_freed_at_once(
    sqlite_server: RunningServer,
) -> None:
    """uvicorn's HTTP protocol hands the connection over on the upgrade and is dropped;
    its parser's references to it were a cycle left to the garbage collector."""
    server = sqlite_server
    sid = await server.new_session({"alice": "editor"})
    # Open and synced: the upgrade is done.
    kinds = await cyclic_garbage(lambda: server.connect(sid, "alice"))
    assert not [k for k in kinds if k.endswith(("LeanHttpProtocol", "HttpToolsProtocol"))], kinds
