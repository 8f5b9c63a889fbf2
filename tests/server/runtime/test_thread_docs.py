"""A side-thread's document in one room on the in-memory store: it follows a run as it
streams (what its sockets are sent builds the same document), is only its owner's, is
built again from the stored thread after a reload, and its sockets close with the thread
or the member. (The wire, with a stock Yjs client: ``tests/server/test_thread_socket.py``.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pycrdt import Array, Doc, Map

from parley.server.store.memory import MemoryStore
from parley.session.errors import NotFound
from parley.session.thread_commands import ThreadCloseCommand
from parley.session.yprotocol import SyncMessage, SyncType, decode_client_frame
from tests.fake_model import Answer, FakeModel, Sent
from tests.server.runtime.harness import MemorySession, Watcher, memory_session
from tests.server.runtime.test_side_threads import answered, ask, open_thread

GATE = asyncio.Event()


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


def thread_socket(s: MemorySession, thread_id: str, user_id: str) -> Watcher:
    """A socket of ``user_id`` syncing the thread: sent the document, then its updates."""
    live = s.room.side_threads.document(thread_id, user_id)
    watcher = Watcher(user_id)
    watcher.send(live.sync_answer(b"\x00"))
    s.room.sockets.attach_thread(thread_id, watcher)  # type: ignore[arg-type]
    return watcher


async def test_the_document_follows_a_streaming_run_for_its_owner_alone() -> None:
    GATE.clear()
    async with memory_session({"alice": "editor", "bob": "editor"}, FakeModel(held_answer)) as s:
        thread_id = await open_thread(s, "bob")
        with pytest.raises(NotFound):
            s.room.side_threads.document(thread_id, "alice")
        early = thread_socket(s, thread_id, "bob")
        await ask(s, "bob", thread_id, "[hold] tell me")
        async with asyncio.timeout(10):
            while "first half" not in str(synced(early)["turns"]):
                await early.changed()
        # Mid-run: the streamed text is there, and a socket opened now gets it too.
        late = thread_socket(s, thread_id, "bob")
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
        GATE.set()
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


async def test_the_document_is_built_again_after_a_reload_and_deleting_closes_it() -> None:
    store = MemoryStore()
    model = FakeModel(held_answer)
    GATE.clear()
    async with memory_session({"bob": "editor"}, model, store=store) as s:
        thread_id = await open_thread(s, "bob")
        await ask(s, "bob", thread_id, "kept")
        await answered(s, thread_id)
        before = s.room.side_threads.document(thread_id, "bob")
        await ask(s, "bob", thread_id, "[hold] cut off")
        await s.until(lambda s: s.room.side_threads.threads[thread_id].running)
        old_state = before.document.doc.get_state()
    async with memory_session({"bob": "editor"}, FakeModel(held_answer), store=store) as s:
        socket = thread_socket(s, thread_id, "bob")
        kept = s.room.side_threads.threads[thread_id]
        turns = synced(socket)["turns"]
        assert [(t["kind"], t["status"], t["content"]) for t in turns] == [
            (t.kind, t.status, t.text) for t in kept.turns
        ]
        assert turns[-1]["reason_code"] == "server_restart"
        # A client still holding the document of before is told it is another one.
        live = s.room.side_threads.document(thread_id, "bob")
        assert not live.document.covers(old_state)
        assert live.document.covers(live.document.doc.get_state())

        deleted = await s.send("bob", ThreadCloseCommand("d", thread_id, delete=True))
        assert deleted["type"] == "ack"
        assert socket.closed == (4404, "side-thread deleted")
        with pytest.raises(NotFound):
            s.room.side_threads.document(thread_id, "bob")
