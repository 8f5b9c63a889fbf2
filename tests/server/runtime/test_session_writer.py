"""The session's one writer on the in-memory store: an event's effects are carried out in
the order store -> commit -> broadcast -> notify, and an event judged again under the
writer on a state that moved is refused there: nothing stored or sent, the refusal
audited."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from pycrdt import Doc

from parley.authz.roles import Member
from parley.server.runtime import thread_cuts
from parley.server.store.memory_tables import MemoryTx
from parley.session.yprotocol import decode_client_frame
from parley.session.ysplit import split_update
from tests.server.runtime.harness import SESSION, Watcher, memory_session
from tests.ystate import state_of


class LoggingWatcher(Watcher):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def send(self, message: bytes | str, frame: bytes | None = None) -> bool:
        if isinstance(message, bytes):
            self.log.append("broadcast")
        return super().send(message, frame)


async def test_a_command_is_stored_committed_broadcast_then_notified(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log: list[str] = []
    append_updates, commit = MemoryTx.append_updates, MemoryTx.commit

    async def stored(
        tx: MemoryTx, rows: Sequence[tuple[str, bytes]], *, last: bool = False
    ) -> list[int]:
        log.append("store")  # a document update, in the transaction
        return await append_updates(tx, rows, last=last)

    def committed(tx: MemoryTx) -> None:
        commit(tx)
        log.append("commit")

    monkeypatch.setattr(MemoryTx, "append_updates", stored)
    monkeypatch.setattr(MemoryTx, "commit", committed)
    async with memory_session({"alice": "editor"}) as s:
        s.room.connections.add(LoggingWatcher(log))  # type: ignore[arg-type]
        monkeypatch.setattr(s.room.runs, "wake", lambda: log.append("notify"))
        log.clear()
        asked = await s.prompt("alice", "hello")
        assert asked["type"] == "ack"
        assert log == ["store", "commit", "broadcast", "notify"]


async def test_a_command_refused_under_the_writer_stores_and_sends_nothing_and_is_audited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with memory_session({"alice": "editor"}) as s:
        document = s.room.writer.document
        before = await s.store.load_doc(SESSION)
        events = await s.store.events_after(SESSION, 0, 10)
        sent = list(s.watcher.frames)
        reached = asyncio.Event()
        writing = document.writing

        def noted(*args: Any, **kwargs: Any) -> Any:
            reached.set()  # the command passed the door and waits for the writer
            return writing(*args, **kwargs)

        monkeypatch.setattr(document, "writing", noted)
        async with document.lock:
            asked = asyncio.create_task(s.prompt("alice", "judged twice"))
            # Waited for beside the command: one that fails before it is a failure here,
            # not a test that waits for good.
            waiter = asyncio.ensure_future(reached.wait())
            await asyncio.wait([waiter, asked], timeout=30, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            assert reached.is_set(), asked
            await s.room.membership.set_member("alice", Member("alice", "viewer"))
        answer = await asked

        assert (answer["type"], answer["code"]) == ("error", "forbidden")
        assert s.room.doc.entries() == [] and s.room.last_seq == 0
        after = await s.store.load_doc(SESSION)
        assert after.updates == before.updates
        assert await s.store.events_after(SESSION, 0, 10) == events
        assert [f for f in s.watcher.frames if isinstance(f, bytes)] == [
            f for f in sent if isinstance(f, bytes)
        ]
        audit = await s.store.access.list_audit(SESSION, limit=10, after=0)
        assert [(a.kind, a.actor) for a in audit] == [("refused", "alice")]


async def test_a_stored_snapshot_is_cut_once_in_a_thread_for_the_answers_that_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review RE-1: cutting a loaded snapshot into a sync answer's parts reads it struct by
    struct (1.3 s on the event loop for 10.8 MB of short entries): it runs in a thread,
    once, however many first syncs wait for it, and they get the whole document."""
    cuts: list[int] = []

    def cut_in_thread(update: bytes, max_bytes: int) -> list[bytes]:
        cuts.append(threading.get_ident())
        return split_update(update, max_bytes)

    monkeypatch.setattr(thread_cuts, "split_update", cut_in_thread)
    async with memory_session(
        {"alice": "editor"}, snapshot_every_updates=3, sync_chunk_bytes=1024
    ) as s:
        for n in range(12):
            assert (await s.message("alice", f"entry {n} " + "x" * 300))["type"] == "ack"
        writer = s.room.writer.document
        await writer.load()  # from the snapshot the log was squashed into
        assert (await s.store.load_doc(SESSION)).snapshot is not None
        first, second = await asyncio.gather(
            writer.sync_answer(b"\x00"), writer.sync_answer(b"\x00")
        )
        assert cuts and all(ident != threading.get_ident() for ident in cuts)
        assert len(cuts) == 1 and first == second and len(first) > 3
        client: Doc[Any] = Doc()
        for frame in first:
            client.apply_update(decode_client_frame(frame).payload)  # type: ignore[union-attr]
        assert state_of(client) == state_of(writer.doc.doc)
