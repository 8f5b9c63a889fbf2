"""A side-thread's document in one room on the in-memory store: it follows a run as it
streams (what its sockets are sent builds the same document), is only its owner's, is
built again from the stored thread after a reload, and its sockets close with the thread
or the member. (The wire, with a stock Yjs client: ``tests/server/test_thread_socket.py``.)"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import replace
from typing import Any

import pytest
from pycrdt import Array, Doc, Map

from parley.authz.policy import Readers
from parley.server.runtime.thread_docs import read_document
from parley.server.store.access_rows import DocumentRow
from parley.server.store.memory import MemoryStore
from parley.server.store.memory_tables import MemoryTx
from parley.server.store.rows import StoredDoc
from parley.session import ysplit
from parley.session.core.state import RESTRICTED_DETAILS
from parley.session.errors import NotFound, Unavailable
from parley.session.thread_commands import ThreadCloseCommand
from parley.session.yprotocol import (
    SyncMessage,
    SyncType,
    decode_client_frame,
    decode_state_vector,
)
from tests.fake_model import Answer, FakeModel, Sent
from tests.server.runtime.harness import SESSION, MemorySession, Watcher, memory_session
from tests.server.runtime.test_side_threads import (
    SECRET,
    answer_with,
    answered,
    ask,
    open_thread,
    watch,
)
from tests.ystate import state_of

GATE = asyncio.Event()


def new_gate() -> asyncio.Event:
    """A gate for this test: an event waited on is bound to its test's event loop."""
    global GATE
    GATE = asyncio.Event()
    return GATE


def held_answer(sent: Sent) -> Answer:
    """Two pieces with a wait between them when asked to ``[hold]``."""
    if "[hold]" in sent.asked_text():
        return ["first half, ", GATE, "second half"]
    return ["quick answer"]


def synced(watcher: Watcher) -> dict[str, Any]:
    """The document a client holds after the updates its thread socket was sent."""
    doc: Doc[Any] = Doc()
    thread, turns = doc.get("thread", type=Map), doc.get("turns", type=Array)
    for frame in watcher.frames:
        message = decode_client_frame(frame) if isinstance(frame, bytes) else None
        if isinstance(message, SyncMessage) and message.sync_type is not SyncType.STEP1:
            doc.apply_update(message.payload)
    return {"thread": thread.to_py(), "turns": turns.to_py() or []}


async def thread_socket(s: MemorySession, thread_id: str, user_id: str) -> Watcher:
    """A socket of ``user_id`` syncing the thread: sent the document, then its updates."""
    live = await s.room.side_threads.document(thread_id, user_id)
    watcher = Watcher(user_id)
    for frame in await live.sync_answer(b"\x00"):
        watcher.send(frame)
    s.room.sockets.attach_thread(thread_id, watcher)  # type: ignore[arg-type]
    return watcher


async def test_the_document_follows_a_streaming_run_for_its_owner_alone() -> None:
    gate = new_gate()
    async with memory_session({"alice": "editor", "bob": "editor"}, FakeModel(held_answer)) as s:
        thread_id = await open_thread(s, "bob")
        with pytest.raises(NotFound):
            await s.room.side_threads.document(thread_id, "alice")
        early = await thread_socket(s, thread_id, "bob")
        await ask(s, "bob", thread_id, "[hold] tell me")
        async with asyncio.timeout(10):
            while "first half" not in str(synced(early)["turns"]):
                await early.changed()
        # Mid-run: the streamed text is there, and a socket opened now gets it too.
        late = await thread_socket(s, thread_id, "bob")
        for client in (early, late):
            prompt, reply = synced(client)["turns"]
            assert (prompt["kind"], prompt["role"], prompt["status"]) == (
                "prompt",
                "user",
                "running",
            )
            assert prompt["content"] == "[hold] tell me"
            assert (reply["role"], reply["status"]) == ("assistant", "streaming")
            assert reply["content"] == "first half, "
        gate.set()
        done = await answered(s, thread_id)
        stored = {t.id: t for t in done.turns}
        for client in (early, late):
            shown = synced(client)
            assert shown["thread"]["id"] == thread_id and shown["thread"]["owner"] == "bob"
            assert [t["id"] for t in shown["turns"]] == [t.id for t in done.turns]
            for turn in shown["turns"]:
                assert (turn["status"], turn["content"]) == (
                    stored[turn["id"]].status,
                    stored[turn["id"]].text,
                )
        assert shown["turns"][-1]["content"] == "first half, second half"

        closed = await s.send("bob", ThreadCloseCommand("c", thread_id, delete=False))
        assert closed["type"] == "ack"
        assert synced(early)["thread"]["status"] == "closed"
        await s.room.membership.set_member("bob", None)
        assert early.closed is not None and early.closed[0] == 4403


async def test_the_document_is_read_back_after_a_reload_and_deleting_closes_it() -> None:
    store = MemoryStore()
    model = FakeModel(held_answer)
    new_gate()
    async with memory_session({"bob": "editor"}, model, store=store) as s:
        thread_id = await open_thread(s, "bob")
        await ask(s, "bob", thread_id, "kept")
        await answered(s, thread_id)
        early = await thread_socket(s, thread_id, "bob")
        await ask(s, "bob", thread_id, "[hold] cut off")
        async with asyncio.timeout(10):
            while "first half" not in str(synced(early)["turns"]):
                await early.changed()
        old_state = s.room.side_threads.docs.live[thread_id].document.doc.get_state()
        held = synced(early)
    async with memory_session({"bob": "editor"}, FakeModel(held_answer), store=store) as s:
        socket = await thread_socket(s, thread_id, "bob")
        kept = s.room.side_threads.threads[thread_id]
        turns = synced(socket)["turns"]
        # The reply cut off by the restart was never stored: it is gone, the rest is kept.
        assert [(t["kind"], t["status"], t["content"]) for t in turns] == [
            (t.kind, t.status, t.text) for t in kept.turns
        ]
        assert len(held["turns"]) == len(turns) + 1
        assert turns[-1]["reason_code"] == "server_restart"
        # The same document, read back from its log: a client holding the old copy syncs.
        live = await s.room.side_threads.document(thread_id, "bob")
        assert live.document.covers(old_state)
        caught_up: Doc[Any] = Doc()
        for frame in early.frames:
            message = decode_client_frame(frame) if isinstance(frame, bytes) else None
            if isinstance(message, SyncMessage) and message.sync_type is not SyncType.STEP1:
                caught_up.apply_update(message.payload)
        for frame in await live.sync_answer(caught_up.get_state()):
            answer = decode_client_frame(frame)
            assert isinstance(answer, SyncMessage)
            caught_up.apply_update(answer.payload)
        assert caught_up.get("turns", type=Array).to_py() == turns

        deleted = await s.send("bob", ThreadCloseCommand("d", thread_id, delete=True))
        assert deleted["type"] == "ack"
        assert socket.closed == (4404, "side-thread deleted")
        with pytest.raises(NotFound):
            await s.room.side_threads.document(thread_id, "bob")
        assert (await store.load_thread_doc(s.room.session_id, thread_id)).updates == []


async def test_a_document_leaves_memory_with_its_last_socket_and_is_read_back() -> None:
    async with memory_session({"bob": "editor"}, FakeModel(held_answer)) as s:
        thread_id = await open_thread(s, "bob")
        socket = await thread_socket(s, thread_id, "bob")
        docs = s.room.side_threads.docs
        state_vector = docs.live[thread_id].document.doc.get_state()
        s.room.sockets.detach_thread(thread_id, socket)  # type: ignore[arg-type]
        docs.release(thread_id, writes=True)
        assert thread_id not in docs.live
        state = synced(socket)
        # Answered while nobody watches: stored in the log all the same.
        await ask(s, "bob", thread_id, "while away")
        done = await answered(s, thread_id)
        assert thread_id not in docs.live
        back = await thread_socket(s, thread_id, "bob")
        turns = synced(back)["turns"]
        assert [(t["id"], t["content"]) for t in turns] == [(t.id, t.text) for t in done.turns]
        assert state["thread"] == synced(back)["thread"]
        # The same document, not one built anew: what the first socket held is part of it.
        assert docs.live[thread_id].document.covers(state_vector)


async def test_a_squashed_log_reads_back_the_same_document() -> None:
    store = MemoryStore()
    pieces = [f"piece {i} " for i in range(12)]
    model = FakeModel(lambda sent: list(pieces))
    async with memory_session({"bob": "editor"}, model, store=store, snapshot_every_updates=3) as s:
        thread_id = await open_thread(s, "bob")
        socket = await thread_socket(s, thread_id, "bob")
        await ask(s, "bob", thread_id, "many pieces")
        await answered(s, thread_id)
        held = s.room.side_threads.docs.live[thread_id].document.doc
        state, shown = held.get_state(), synced(socket)
    stored = await store.load_thread_doc(s.room.session_id, thread_id)
    assert stored.snapshot is not None  # squashed, and streamed pieces came after it
    read_back = read_document(stored)
    assert decode_state_vector(read_back.doc.get_state()) == decode_state_vector(state)
    assert read_back.turns.to_py() == shown["turns"]
    assert shown["turns"][-1]["content"] == "".join(pieces)
    async with memory_session({"bob": "editor"}, FakeModel(held_answer), store=store) as s:
        again = await thread_socket(s, thread_id, "bob")
        assert synced(again) == shown


async def test_a_socket_opened_mid_run_while_nobody_watched_gets_the_text_so_far() -> None:
    gate = asyncio.Event()  # of this test's loop
    model = FakeModel(lambda sent: ["first half, ", gate, "second half"])
    async with memory_session({"bob": "editor"}, model) as s:
        thread_id = await open_thread(s, "bob")
        await ask(s, "bob", thread_id, "[hold] go")
        for _ in range(500):
            if "first half" in "".join(_active_text(s, thread_id)):
                break
            await asyncio.sleep(0.01)
        docs = s.room.side_threads.docs
        assert thread_id in docs.live  # held for its run, though nobody watches
        socket = await thread_socket(s, thread_id, "bob")
        reply = synced(socket)["turns"][-1]
        assert (reply["status"], reply["content"]) == ("streaming", "first half, ")
        gate.set()
        done = await answered(s, thread_id)
        assert [t["content"] for t in synced(socket)["turns"]] == [t.text for t in done.turns]
        s.room.sockets.detach_thread(thread_id, socket)  # type: ignore[arg-type]
        docs.release(thread_id, writes=True)
        assert thread_id not in docs.live


def _active_text(s: MemorySession, thread_id: str) -> list[str]:
    active = s.room.side_threads.active.get(thread_id)
    return [] if active is None else active.text


async def test_a_change_not_stored_is_never_shown_and_its_sockets_resync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with memory_session({"bob": "editor"}, FakeModel(held_answer)) as s:
        thread_id = await open_thread(s, "bob")
        socket = await thread_socket(s, thread_id, "bob")
        sent = len(socket.frames)

        async def refuse(*_: object) -> list[int]:
            raise Unavailable("the database is unavailable; nothing was stored")

        monkeypatch.setattr(MemoryTx, "append_thread_updates", refuse)
        refused = await s.send("bob", ThreadCloseCommand("c", thread_id, delete=False))
        assert refused["type"] == "error" and refused["code"] == "unavailable"
        assert socket.closed is not None and socket.closed[0] == 1013
        assert [f for f in socket.frames[sent:] if isinstance(f, bytes)] == []
        monkeypatch.undo()
        s.room.sockets.detach_thread(thread_id, socket)  # type: ignore[arg-type]
        again = await thread_socket(s, thread_id, "bob")
        assert synced(again)["thread"]["status"] == "open"  # as stored
        closed = await s.send("bob", ThreadCloseCommand("c2", thread_id, delete=False))
        assert closed["type"] == "ack" and synced(again)["thread"]["status"] == "closed"


async def test_a_source_denied_to_the_owner_is_rewritten_in_the_stored_log_at_once() -> None:
    """With no socket open (where a follower serves the log as stored), the denial itself
    rewrites the thread's document: the log read back holds the placeholder, no vault."""
    vault = DocumentRow("d1", SESSION, "Vault", SECRET, Readers("d1", frozenset({"bob"})), 0)
    async with memory_session({"bob": "editor"}, FakeModel(answer_with)) as s:
        await s.store.access.add_document(vault)
        thread_id = await open_thread(s, "bob")
        await ask(s, "bob", thread_id, "what is the vault code?")
        await answered(s, thread_id)

        before = read_document(await s.store.load_thread_doc(SESSION, thread_id))
        assert b"7731" in before.doc.get_update()
        member = s.room.membership.members["bob"]
        await s.room.membership.set_member("bob", replace(member, denials=frozenset({"read:d1"})))
        after = read_document(await s.store.load_thread_doc(SESSION, thread_id))
        assert b"7731" not in after.doc.get_update()
        turns = after.doc.get("turns", type=Array).to_py() or []
        assert RESTRICTED_DETAILS in [t["content"] for t in turns]


async def test_a_source_denied_to_the_owner_leaves_the_document_its_sockets_are_sent() -> None:
    """Bob's side-thread drew on the vault; then he is denied it (``read:d1``). A socket
    opened after that syncs as a stock client does (an empty state vector, then the
    updates) and is sent no byte of the vault's text: not while an earlier socket holds
    the document (that one is shown the placeholder too), nor once the document is read
    back from its log. The ``thread`` frames on his session socket withhold it as well."""
    vault = DocumentRow("d1", SESSION, "Vault", SECRET, Readers("d1", frozenset({"bob"})), 0)
    async with memory_session({"bob": "editor"}, FakeModel(answer_with)) as s:
        await s.store.access.add_document(vault)
        session_socket = watch(s, "bob")
        thread_id = await open_thread(s, "bob")
        early = await thread_socket(s, thread_id, "bob")
        await ask(s, "bob", thread_id, "what is the vault code?")
        await answered(s, thread_id)
        async with asyncio.timeout(10):  # its updates may follow the run's end
            while "7731" not in str(synced(early)["turns"]):
                await early.changed()
        member = s.room.membership.members["bob"]
        await s.room.membership.set_member("bob", replace(member, denials=frozenset({"read:d1"})))

        late = await thread_socket(s, thread_id, "bob")
        for client in (early, late):
            contents = [t["content"] for t in synced(client)["turns"]]
            assert "7731" not in str(contents) and RESTRICTED_DETAILS in contents
        assert not any(b"7731" in f for f in late.frames if isinstance(f, bytes))

        docs = s.room.side_threads.docs
        for socket in (early, late):
            s.room.sockets.detach_thread(thread_id, socket)  # type: ignore[arg-type]
        docs.release(thread_id, writes=True)
        assert thread_id not in docs.live
        again = await thread_socket(s, thread_id, "bob")
        assert not any(b"7731" in f for f in again.frames if isinstance(f, bytes))
        assert RESTRICTED_DETAILS in [t["content"] for t in synced(again)["turns"]]

        told = len(session_socket.frames)
        await ask(s, "bob", thread_id, "and now?")
        done = await answered(s, thread_id)

        def told_since() -> list[dict[str, Any]]:
            return [json.loads(f) for f in session_socket.frames[told:] if isinstance(f, str)]

        def shown_in_full() -> bool:  # the frame of the finished thread (it may follow)
            return any(
                f["type"] == "thread" and len(f["thread"]["turns"]) == len(done.turns)
                for f in told_since()
            )

        async with asyncio.timeout(10):
            while not shown_in_full():
                await session_socket.changed()
        assert "7731" not in json.dumps(told_since())


async def test_reading_a_document_from_its_log_keeps_no_write_waiting_and_loses_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review: a side-thread's socket opening with no other on it read the document from
    the store under the session's writer lock, so one member opening and closing sockets
    in a loop kept every write of the session waiting, and half of another member's
    messages were refused ``unavailable``. The log is read outside the lock, once for the
    sockets opening at the same time (each queued on the lock on its own, and a loop of
    opens queued hundreds); a change to it made meanwhile is not built on an old copy (the
    log is read again): the document opened is the one the log holds."""
    async with memory_session({"alice": "editor", "bob": "editor"}, FakeModel(held_answer)) as s:
        thread_id = await open_thread(s, "bob")
        await ask(s, "bob", thread_id, "kept")
        await answered(s, thread_id)
        assert thread_id not in s.room.side_threads.docs.live
        reading, go_on = asyncio.Event(), asyncio.Event()
        load, loads = s.store.load_thread_doc, []

        async def slow_load(session_id: str, thread: str) -> StoredDoc:
            loads.append(thread)
            stored = await load(session_id, thread)
            reading.set()
            await go_on.wait()
            return stored

        monkeypatch.setattr(s.store, "load_thread_doc", slow_load)
        openings = [
            asyncio.create_task(s.room.side_threads.document(thread_id, "bob")) for _ in range(3)
        ]
        async with asyncio.timeout(10):  # a guard against a hang, not a measure
            await reading.wait()
            assert not s.room.writer.document.lock.locked()
            said = await s.message("alice", "not kept waiting")
            closed = await s.send("bob", ThreadCloseCommand("c", thread_id, delete=False))
        assert said["type"] == "ack" and closed["type"] == "ack"
        go_on.set()
        live, *others = await asyncio.gather(*openings)
        assert all(other is live for other in others)
        assert loads == [thread_id] * 2  # once for the three; again, stale, under the lock
        monkeypatch.undo()
        stored = read_document(await s.store.load_thread_doc(SESSION, thread_id))
        held = live.document.doc
        assert decode_state_vector(held.get_state()) == decode_state_vector(stored.doc.get_state())
        for name, kind in (("thread", Map), ("turns", Array)):
            assert held.get(name, type=kind).to_py() == stored.doc.get(name, type=kind).to_py()
        assert held.get("thread", type=Map).to_py()["status"] == "closed"


async def test_a_threads_sync_answers_are_cut_once_in_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A side-thread's socket syncing was answered by encoding its document and cutting it
    into parts on the loop, struct by struct in Python, at every sync step 1: a long
    thread's held every socket of the node as often as its sockets asked. It is cut in a
    thread, once, as the session's own answers are, however many answers wait for it; an
    answer after it cuts nothing; each is the whole document."""
    cuts: list[int] = []
    read_runs = ysplit._read_runs

    def counted(update: bytes, max_run_bytes: int) -> Any:
        cuts.append(threading.get_ident())
        return read_runs(update, max_run_bytes)

    monkeypatch.setattr(ysplit, "_read_runs", counted)
    async with memory_session(
        {"bob": "editor"}, FakeModel(answer_with), sync_chunk_bytes=1024
    ) as s:
        thread_id = await open_thread(s, "bob")
        for n in range(6):
            assert (await ask(s, "bob", thread_id, f"question {n} " + "x" * 300))["type"] == "ack"
            await answered(s, thread_id)
        live = await s.room.side_threads.document(thread_id, "bob")
        assert len(live.document.doc.get_update()) > 3 * 1024
        # The session's turn: no write of the thread is under way, none commits meanwhile
        # (a run's last write may still be settling after its answer: an answer is of what
        # is committed, and the live document would hold a change not yet stored).
        async with s.room.writer.document.holding():
            cuts.clear()
            first, second = await asyncio.gather(
                live.sync_answer(b"\x00"), live.sync_answer(b"\x00")
            )
            assert cuts and all(ident != threading.get_ident() for ident in cuts)
            assert len(cuts) == 1 and first == second and len(first) > 3
            cuts.clear()
            assert await live.sync_answer(b"\x00") == first and cuts == []
            client: Doc[Any] = Doc()
            for frame in first:
                client.apply_update(decode_client_frame(frame).payload)  # type: ignore[union-attr]
            assert state_of(client) == state_of(live.document.doc)
            assert client.get("turns", type=Array).to_py() == (
                live.document.doc.get("turns", type=Array).to_py()
            )
