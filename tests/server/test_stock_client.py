"""An unmodified Yjs client (npm yjs + y-websocket + ws) against a live server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pycrdt import Map

from tests.conftest import RunningServer, make_settings, serve_in_process, sqlite_url
from tests.stock_client import Event, StockYjsClient, ensure_node_modules
from tests.yclient import YClient, all_replies_settled

pytestmark = pytest.mark.node


async def test_stock_client_sees_the_stream_and_cannot_write(tmp_path: Path) -> None:
    await asyncio.to_thread(ensure_node_modules)
    url = sqlite_url(tmp_path)
    settings = make_settings(url, tmp_path / "data", offline_token_delay_ms=20)
    async with serve_in_process(settings) as server:
        await _scenario(server)


async def test_a_stock_clients_sync_and_edits_are_never_held_back(tmp_path: Path) -> None:
    """Its sync, presence, refused writes and the stream it reads stay within the member's
    budget of bytes read (``PARLEY_INBOUND_BYTES_PER_S``): counted, never held back."""
    await asyncio.to_thread(ensure_node_modules)
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", offline_token_delay_ms=20)
    async with serve_in_process(settings) as server:
        sid = await _scenario(server)
        state = server.app.state.parley
        assert (await state.rooms.get(sid)).inbound("sam").read_bytes > 0
        pauses = state.metrics.registry.get_sample_value("parley_inbound_pauses_total")
        assert pauses == 0


async def _scenario(server: RunningServer) -> str:
    """The stock client's session, once it has seen everything (its id)."""
    sid = await server.new_session({"alice": "editor", "sam": "editor"})
    stock = await StockYjsClient.start(
        f"{server.ws_url}/ws/sessions", sid, await server.token(sid, "sam"), name="Sam"
    )
    try:
        await stock.wait_event(lambda e: e.get("event") == "sync" and e["synced"], 15)
        alice = await server.connect(sid, "alice")
        await alice.wait_until(
            lambda c: any(s and s["parley"]["user_id"] == "sam" for s in c.awareness.values())
        )
        await stock.command({"cmd": "typing", "value": True})
        await alice.wait_until(lambda c: any(s and s.get("typing") for s in c.awareness.values()))
        await alice.command({"type": "prompt", "id": "p", "text": "stream to everyone"})
        await alice.wait_until(lambda c: all_replies_settled(c, 1))
        for _ in range(100):
            dump = await stock.dump()
            if any(e["status"] == "done" for e in dump["transcript"] if e["kind"] == "reply"):
                break
            await asyncio.sleep(0.05)
        prompt, reply = dump["transcript"]
        assert prompt["content"] == "stream to everyone" and prompt["author"] == "alice"
        assert reply["content"] == alice.entries()[1]["content"]
        # The stock client saw the reply grow token by token, not arrive whole.
        assert dump["reply_lengths_seen"][reply["id"]] > 5

        before = await server.transcript(sid)
        written = await stock.command({"cmd": "write"})
        assert written["attempted"] == 4
        await alice.command({"type": "message", "id": "m", "text": "after the forgery"})
        await alice.wait_until(lambda c: c.entries()[-1]["content"] == "after the forgery")
        after = await server.transcript(sid)
        assert after[:2] == before
        assert [e["id"] for e in alice.entries()] == [e["id"] for e in after]
        assert all(e["id"] != "forged" and "HACK" not in e["content"] for e in after)
        assert all(e["status"] != "hacked" for e in alice.entries())
        # It cannot be told (it sent no command): the operator sees it, once for the socket.
        registry = server.app.state.parley.metrics.registry
        for _ in range(200):
            refused = registry.get_sample_value(
                "parley_client_writes_refused_total", {"client": "stock"}
            )
            if refused:
                break
            await asyncio.sleep(0.05)
        assert refused == 1
        # The stock client's own copy diverged locally, but nobody else received it,
        # and it still receives the server's updates.
        for _ in range(100):
            dump = await stock.dump()
            if any(e["content"] == "after the forgery" for e in dump["transcript"]):
                break
            await asyncio.sleep(0.05)
        assert any(e["content"] == "after the forgery" for e in dump["transcript"]), [
            e for e in stock.history if e.get("event") != "reply"
        ][-5:]
        assert not any(e.get("event") == "connection-close" for e in stock.history)
    finally:
        await stock.close()
    return sid


async def test_a_stock_client_is_synced_with_what_was_committed(tmp_path: Path) -> None:
    """y-websocket counts itself synced when it applies the server's sync step 2, and an
    app reads the document then: it holds what was committed when the client asked
    (review: no entries and an empty ``meta`` then, the messages in the next frame)."""
    await asyncio.to_thread(ensure_node_modules)
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "owner", "vic": "viewer"})
        alice = await server.connect(sid, "alice")
        for n in range(3):
            ack = await alice.command({"type": "message", "id": f"m{n}", "text": f"hello {n}"})
            assert ack["type"] == "ack"
        meta = alice.doc.get("meta", type=Map).to_py()
        assert meta
        stock = await StockYjsClient.start(
            f"{server.ws_url}/ws/sessions", sid, await server.token(sid, "vic")
        )
        try:
            synced = await stock.wait_event(lambda e: e.get("event") == "sync", 15)
            assert synced["synced"]
            assert (synced["transcript"], synced["meta"]) == (3, meta)
        finally:
            await stock.close()


async def test_a_stock_provider_sends_commands_on_its_own_message_type(tmp_path: Path) -> None:
    """One registered ``messageHandlers`` entry is all a stock provider needs: its commands
    are acked on the same channel, errors come back typed, and a plain stock provider in the
    same session is never sent a frame it cannot decode (it would crash on one)."""
    await asyncio.to_thread(ensure_node_modules)
    url = sqlite_url(tmp_path)
    settings = make_settings(url, tmp_path / "data", offline_token_delay_ms=5)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"sam": "editor", "vic": "viewer", "pat": "viewer"})
        ws_url = f"{server.ws_url}/ws/sessions"
        sam = await StockYjsClient.start(ws_url, sid, await server.token(sid, "sam"), commands=True)
        vic = await StockYjsClient.start(ws_url, sid, await server.token(sid, "vic"), commands=True)
        plain = await StockYjsClient.start(ws_url, sid, await server.token(sid, "pat"))
        try:
            for client in (sam, vic, plain):
                await client.wait_event(lambda e: e.get("event") == "sync" and e["synced"], 15)

            async def reply_to(client: StockYjsClient, payload: dict[str, object]) -> Event:
                sent = await client.command({"cmd": "command", "payload": payload})
                assert sent["sent"] is True
                event = await client.wait_event(
                    lambda e: (
                        e.get("event") == "command-reply" and e["reply"].get("id") == payload["id"]
                    ),
                    15,
                )
                return event["reply"]

            ack = await reply_to(sam, {"type": "prompt", "id": "c1", "text": "over binary"})
            assert ack["type"] == "ack" and ack["seq"] == 1 and ack["prompt_id"]
            # Sent again (a reconnecting client would): the first ack, nothing stored twice.
            assert await reply_to(sam, {"type": "prompt", "id": "c1", "text": "over binary"}) == ack
            refused = await reply_to(vic, {"type": "prompt", "id": "v1", "text": "may I?"})
            assert (refused["type"], refused["code"]) == ("error", "forbidden")
            # Forged writes are refused with an error on the command channel, too.
            await vic.command({"cmd": "write"})
            await vic.wait_event(
                lambda e: (
                    e.get("event") == "command-reply"
                    and e["reply"].get("code") == "forbidden"
                    and e["reply"].get("id") is None
                ),
                15,
            )

            def answered(dump: Event) -> bool:
                return any(
                    e["kind"] == "reply" and e["status"] == "done" for e in dump["transcript"]
                )

            for client in (sam, plain):
                for _ in range(200):
                    dump = await client.dump()
                    if answered(dump):
                        break
                    await asyncio.sleep(0.05)
                assert answered(dump)
                assert [e["kind"] for e in dump["transcript"]] == ["prompt", "reply"]
            # The plain provider got through all of it: alive, never sent a command reply.
            assert plain.returncode is None
            assert not [e for e in plain.history if e.get("event") in ("command-reply", "fatal")]
        finally:
            for client in (sam, vic, plain):
                await client.close()


@pytest.mark.parametrize("attacker", ["mal", "sam"], ids=["another-member", "same-member"])
async def test_a_stock_client_echoing_a_leaving_at_the_top_clock_is_never_refused(
    tmp_path: Path, attacker: str
) -> None:
    """Review: a member (a viewer will do) showed a new awareness client at clock
    2^53 - 2 and closed the socket; the server told everyone it left at 2^53 - 1, a stock
    client echoed that, and the server refused the echo ("awareness clock out of range")
    with an error frame and a count toward the abuse limit: in a loop, every stock client
    was closed 4429, for good. Whatever the server accepts, what it derives from it comes
    back silently. From the stock client's own member too (review of the mend): its echo
    of the state took the client kept from the closed socket, and its echo of the leaving,
    one clock past the top, was refused."""
    await asyncio.to_thread(ensure_node_modules)
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"sam": "editor", "mal": "viewer"})
        ws_url = f"{server.ws_url}/ws/sessions"
        sam = await StockYjsClient.start(ws_url, sid, await server.token(sid, "sam"), commands=True)
        try:
            await sam.wait_event(lambda e: e.get("event") == "sync" and e["synced"], 15)
            await _said(sam, "m0")  # (its socket speaks commands from now on: errors come)
            # The top the server accepted before, and the one it accepts now (2^32 below the
            # largest clock JavaScript reads): refused, the attacker alone is told.
            for n, clock in enumerate((2**53 - 2, 2**53 - 1 - 2**32)):
                client_id = 50_000 + n
                mal = await server.connect(sid, attacker, commands="text")
                await mal.set_awareness(client_id, clock, {})
                await mal.wait_until(lambda c, i=client_id: i in c.awareness or bool(c.unsolicited))
                if client_id in mal.awareness:
                    await _until_seen(sam, client_id, True)
                    await mal.close()
                    await _until_seen(sam, client_id, False)  # its echo is on the way
                else:
                    await mal.close()
            await _said(sam, "m1")  # what the server said of the echoes came before
            replies = [e["reply"] for e in sam.history if e.get("event") == "command-reply"]
            assert [(r["type"], r.get("id")) for r in replies] == [("ack", "m0"), ("ack", "m1")]
            assert not [e for e in sam.history if e.get("event") == "connection-close"]
        finally:
            await sam.close()


async def test_a_stock_client_showing_a_state_that_is_not_an_object_stays_connected(
    tmp_path: Path,
) -> None:
    """Review RE-3: ``awareness.setLocalState(5)`` (a string, an array, a boolean) closed
    a stock client 4400, which y-websocket 3.x takes as final: it never came back. Such a
    state is shown to nobody, refused ``invalid`` once, and the socket stays."""
    await asyncio.to_thread(ensure_node_modules)
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"sam": "editor", "alice": "editor"})
        alice = await server.connect(sid, "alice")
        ws_url = f"{server.ws_url}/ws/sessions"
        sam = await StockYjsClient.start(ws_url, sid, await server.token(sid, "sam"), commands=True)
        try:
            await sam.wait_event(lambda e: e.get("event") == "sync" and e["synced"], 15)
            await _said(sam, "m0")  # (its socket speaks commands from now on: errors come)
            for value in (5, "away", [1, 2], True, 6):
                await sam.command({"cmd": "state", "value": value})
            await _said(sam, "m1")  # its states were handled before
            await sam.command({"cmd": "state", "value": {"name": "Sam"}})
            await alice.wait_until(
                lambda c: any(s and s.get("name") == "Sam" for s in c.awareness.values())
            )
            assert all(s is None or isinstance(s, dict) for s in alice.awareness.values())
            replies = [e["reply"] for e in sam.history if e.get("event") == "command-reply"]
            assert [(r["type"], r.get("id"), r.get("code")) for r in replies] == [
                ("ack", "m0", None),
                ("error", None, "invalid"),
                ("ack", "m1", None),
            ]
            assert not [e for e in sam.history if e.get("event") == "connection-close"]
            assert alice.close_code is None
        finally:
            await sam.close()


async def _said(client: StockYjsClient, command_id: str) -> None:
    """Send a message and wait for its answer, whatever came before it."""
    payload = {"type": "message", "id": command_id, "text": "hi"}
    assert (await client.command({"cmd": "command", "payload": payload}))["sent"] is True
    await client.wait_event(
        lambda e: e.get("event") == "command-reply" and e["reply"].get("id") == command_id, 15
    )


async def _until_seen(client: StockYjsClient, client_id: int, seen: bool) -> None:
    for _ in range(200):
        dump = await client.dump()
        if any(s["clientID"] == client_id for s in dump["awareness"]) == seen:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"client {client_id} {'never' if seen else 'still'} seen")


async def test_a_stock_client_past_the_connection_cap_comes_back_once_there_is_room(
    tmp_path: Path,
) -> None:
    """Review RK-2: a socket past ``PARLEY_MAX_CONNECTIONS_PER_USER`` was accepted and closed
    4429, which a stock client (3.x) takes as final: it never came back, even after the
    member's other sockets closed. It is refused at the upgrade (429), which it retries."""
    await asyncio.to_thread(ensure_node_modules)
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data", max_connections_per_user=1)
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "editor"})
        held = await server.connect(sid, "alice")
        stock = await StockYjsClient.start(
            f"{server.ws_url}/ws/sessions", sid, await server.token(sid, "alice")
        )
        try:
            await stock.wait_event(lambda e: e.get("event") == "connection-close", 30)
            await held.close()
            await stock.wait_event(lambda e: e.get("event") == "sync" and e.get("synced"), 30)
            assert not [e for e in stock.history if e.get("event") == "closed"], stock.history
        finally:
            await stock.close()


async def test_a_viewers_stock_client_that_types_stays_connected(tmp_path: Path) -> None:
    """Review RE F1: a viewer's app typing into the shared doc (an editor bound to an
    entry's text) sends a refused update per keystroke; the 51st closed it 4429 "too many
    refused frames", which y-websocket 3.x takes as final: it never came back, and never
    saw a later message. Refused updates are dropped and count toward no abuse limit (the
    frame rate and the document-bytes budget bound them)."""
    await asyncio.to_thread(ensure_node_modules)
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"alice": "owner", "vic": "viewer"})
        alice = await server.connect(sid, "alice")
        await alice.command({"type": "message", "id": "m0", "text": "type over me"})
        vic = await StockYjsClient.start(
            f"{server.ws_url}/ws/sessions", sid, await server.token(sid, "vic")
        )
        try:
            await vic.wait_event(lambda e: e.get("event") == "sync" and e["synced"], 15)
            assert (await vic.command({"cmd": "type", "count": 80}))["typed"] == 80
            # Frames are handled in order: once its state after the typing is shown, every
            # keystroke was (or the socket was closed on the way).
            await vic.command({"cmd": "state", "value": {"after": "typing"}})

            def closed() -> bool:
                return any(e.get("event") == "connection-close" for e in vic.history)

            def shown(c: YClient) -> bool:
                return any(s and s.get("after") == "typing" for s in c.awareness.values())

            for _ in range(400):
                if closed() or shown(alice):
                    break
                await asyncio.sleep(0.05)
            assert not closed(), [e for e in vic.history if e.get("event") != "reply"][-5:]
            await alice.command({"type": "message", "id": "m1", "text": "after the typing"})
            for _ in range(200):
                dump = await vic.dump()
                if any(e["content"] == "after the typing" for e in dump["transcript"]):
                    break
                await asyncio.sleep(0.05)
            assert [e["content"] for e in dump["transcript"]][1:] == ["after the typing"]
            assert not [e for e in vic.history if e.get("event") in ("connection-close", "closed")]
            stored = await server.transcript(sid)
            assert [e["content"] for e in stored] == ["type over me", "after the typing"]
        finally:
            await vic.close()


async def test_a_stock_client_set_up_as_documented_hears_member_frames_after_a_reconnect(
    tmp_path: Path,
) -> None:
    """Review RH-4: set up as the websocket page showed (``params: {token}``, the handler
    for message type 100), a stock client was sent ``member`` frames on a connection only
    after it sent a command there: after each reconnect it heard no role change until then.
    Opened as the page shows now (``commands: 'binary'`` among its params), it hears them
    on every connection."""
    await asyncio.to_thread(ensure_node_modules)
    settings = make_settings(sqlite_url(tmp_path), tmp_path / "data")
    async with serve_in_process(settings) as server:
        sid = await server.new_session({"sam": "editor", "bob": "viewer"})
        ws_url = f"{server.ws_url}/ws/sessions"
        sam = await StockYjsClient.start(ws_url, sid, await server.token(sid, "sam"), commands=True)
        try:
            await _connected(sam)
            await _said(sam, "m0")  # its first connection speaks commands
            await sam.command({"cmd": "reconnect"})  # as after a network drop
            await _connected(sam)
            put = await server.http.put(
                f"/api/v1/sessions/{sid}/members/bob", json={"role": "editor"}
            )
            assert put.status_code == 200, put.text

            def bob_promoted(e: Event) -> bool:
                reply = e.get("reply") if e.get("event") == "command-reply" else None
                return (
                    isinstance(reply, dict)
                    and reply.get("type") == "member"
                    and (reply.get("user_id") == "bob" and reply.get("role") == "editor")
                )

            await sam.wait_event(bob_promoted, 15)
        finally:
            await sam.close()


async def _connected(client: StockYjsClient) -> None:
    """Wait for the client's next connection and its sync."""
    await client.wait_event(lambda e: e.get("event") == "status" and e["status"] == "connected", 15)
    await client.wait_event(lambda e: e.get("event") == "sync" and e["synced"], 15)
