"""What event streams read in memory (``server.runtime.stream_feed``) and their ids
(``server.http.sse_cursor``), without a server."""

from __future__ import annotations

import asyncio

import pytest
from pycrdt import Doc

from parley.server.http.sse_cursor import Cursor
from parley.server.runtime.stream_feed import ReplyText, StreamFeed
from parley.session.errors import BadEventId
from parley.session.events import StoredEvent
from parley.session.schema import QueuedItem, SessionDocument


def _read_feed() -> StreamFeed:
    feed = StreamFeed()
    feed.readers["alice"] += 1  # with no reader, commits keep nothing for one
    return feed


def _streaming_reply() -> SessionDocument:
    doc = SessionDocument(Doc())
    doc.add_prompt(id="p1", seq=1, author="alice", text="hi", created_at=1)
    doc.start_reply(prompt_ids=["p1"], reply_id="r1", author="model", created_at=2)
    return doc


def test_a_write_under_way_shows_the_text_of_the_last_commit_only() -> None:
    doc, feed = _streaming_reply(), _read_feed()
    doc.append_reply_text("r1", "stored")
    assert feed.reply(doc, "r1", writing=False) == ReplyText("stored", True)
    doc.append_reply_text("r1", " and not yet")  # the write waits for its commit
    assert feed.reply(doc, "r1", writing=True) == ReplyText("stored", True)
    feed.committed(doc, ())
    assert feed.reply(doc, "r1", writing=True) == ReplyText("stored and not yet", True)
    doc.finish_prompts(["p1"])
    feed.committed(doc, (3,))
    assert feed.reply(doc, "r1", writing=True) == ReplyText("stored and not yet", False)
    assert feed.reply(doc, "missing", writing=False) is None


def test_the_queue_is_the_committed_plan() -> None:
    doc, feed = _streaming_reply(), _read_feed()
    doc.add_prompt(id="p2", seq=2, author="bob", text="next", created_at=3)
    doc.set_queue([QueuedItem("p2", 2, "bob")])
    assert feed.queue(doc, writing=True) == []  # not committed yet
    feed.committed(doc, (4,))
    assert feed.queue(doc, writing=True) == [{"prompt_id": "p2", "seq": 2, "author": "bob"}]
    doc.set_queue([])
    assert feed.queue(doc, writing=False) == []


def test_a_reply_first_asked_for_during_a_write_is_unknown_until_the_commit() -> None:
    doc, feed = _streaming_reply(), _read_feed()
    assert feed.reply(doc, "r1", writing=True) is None
    doc.append_reply_text("r1", "text")
    feed.committed(doc, ())
    assert feed.reply(doc, "r1", writing=True) == ReplyText("text", True)


def test_the_head_is_known_only_from_the_rooms_own_commits() -> None:
    doc, feed = _streaming_reply(), StreamFeed()
    assert feed.head is None
    feed.committed(doc, (4, 5))
    assert feed.head == 5
    feed.committed(doc, ())  # reply text: no event
    assert feed.head == 5
    feed.changed()  # events stored beside the room, say
    assert feed.head is None
    feed.committed(doc, (6,))
    feed.committed(doc, None)  # a replica's tail: events unknown
    assert feed.head is None


async def test_streams_woken_by_one_change_share_one_read() -> None:
    feed = StreamFeed()
    reads: list[int] = []
    release = asyncio.Event()

    async def read(after: int) -> list[StoredEvent]:
        reads.append(after)
        await release.wait()
        return [StoredEvent("s", after + 1, 0, "fact_set", None, {})]

    generation = feed.generation
    waiting = [asyncio.create_task(feed.events_after(3, generation, read)) for _ in range(5)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # one stream goes: the others' read goes on
    release.set()
    results = await asyncio.gather(*waiting[1:])
    assert reads == [3] and all(r[0].seq == 4 for r in results)
    feed.changed()
    await feed.events_after(3, feed.generation, read)  # a new change: a new read
    await feed.events_after(4, feed.generation, read)
    assert reads == [3, 3, 4]


async def test_a_wait_ends_on_a_change_or_its_timeout() -> None:
    feed = StreamFeed()
    generation = feed.generation
    assert not await feed.wait(generation, 0.01)
    feed.changed()
    assert await feed.wait(generation, 10)  # changed since: at once


def test_ids_name_the_cursor_and_nothing_else() -> None:
    for cursor in (Cursor(0), Cursor(42), Cursor(43, "6f1c", 57)):
        assert Cursor.parse(str(cursor)) == cursor
    for bad in ("", "x", "-1", "1.2", "1.r", "1.r.x", "1..2", "1.r.2.3", "1" * 16, "1 2"):
        with pytest.raises(BadEventId):
            Cursor.parse(bad)


def test_a_cursor_follows_a_reply_from_its_start_to_its_end() -> None:
    def event(seq: int, kind: str, **data: object) -> StoredEvent:
        return StoredEvent("s", seq, 0, kind, None, dict(data))

    cursor = Cursor(1).after(event(2, "run_started", reply_id="r"))
    assert cursor == Cursor(2, "r", 0)
    cursor = cursor.sent(10).after(event(3, "run_failed", reply_id=None))  # never ran
    assert cursor == Cursor(3, "r", 10)
    cursor = cursor.after(event(4, "member_joined", user_id="bob"))
    assert str(cursor) == "4.r.10"
    assert cursor.after(event(5, "reply_completed", reply_id="r")) == Cursor(5)
