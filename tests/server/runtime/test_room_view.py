"""The core's view of a loaded room, kept until what it holds changes (``KeptView``): after
every kind of change, the view the writer judges by is the one built from nothing now."""

from __future__ import annotations

from dataclasses import replace

from parley.authz.policy import Readers
from parley.server.runtime.room import SessionRoom
from parley.server.runtime.room_view import session_view
from parley.session.core import SessionView
from tests.fake_model import FakeModel, Forever
from tests.server.runtime.harness import memory_session

# What a view holds by value; the rest are the room's parts' methods, asked when read.
BY_VALUE = (
    "doc",
    "queue",
    "running",
    "running_reply",
    "last_seq",
    "limits",
    "accepting_prompts",
    "restricted_replies",
    "restricted_replies_by",
    "threads",
    "thread_limits",
)


def _values(view: SessionView) -> tuple[object, ...]:
    return (*(getattr(view, name) for name in BY_VALUE), view.document_bytes())


def _kept_is_built_now(room: SessionRoom) -> SessionView:
    kept = room.writer.view()
    assert _values(kept) == _values(session_view(room))
    return kept


async def test_the_kept_view_follows_every_change_of_the_room() -> None:
    model = FakeModel(lambda sent: ["word ", Forever()])  # a reply that goes on streaming
    async with memory_session({"alice": "editor", "bob": "viewer"}, model) as s:
        room = s.room
        view = _kept_is_built_now(room)
        assert room.writer.view() is view  # nothing changed: not built again
        await s.message("alice", "hello")  # an entry: the sequence and the size move
        assert _kept_is_built_now(room) is not view
        room.use_settings(room.model, "shared")  # the policy, one field at a time
        assert _kept_is_built_now(room).restricted_replies == "shared"
        room.use_settings(room.model, "shared", "alice")
        assert _kept_is_built_now(room).restricted_replies_by == "alice"
        before = room.doc
        await room.writer.document.load()  # the document read again from the store
        assert _kept_is_built_now(room).doc is not before
        await s.prompt("alice", "hi")  # the queue, then a run and its reply
        await s.until(lambda s: s.room.active_run is not None and bool(s.room.active_run.text))
        active = room.active_run
        assert active is not None and _kept_is_built_now(room).running_reply is active.reply
        # What the run drew on so far, as the runner records it (``RunSteps._append``).
        active.reply = replace(active.reply, restriction=(Readers("d1", frozenset({"alice"})),))
        assert _kept_is_built_now(room).running_reply is active.reply
        room.draining = True
        assert not _kept_is_built_now(room).accepting_prompts
        room.use_settings("another-model", "shared", "alice")  # the context's settings
        _kept_is_built_now(room)
