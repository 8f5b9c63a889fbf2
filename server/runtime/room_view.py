"""A loaded room as the session core reads it: the session as committed (``SessionView``),
with the limits the settings put on its documents and side-threads."""

from __future__ import annotations

from operator import is_
from typing import TYPE_CHECKING

from parley.server.runtime.back_references import weak_method
from parley.session.core import DocumentLimits, SessionView, ThreadLimits

if TYPE_CHECKING:
    from parley.server.runtime.room import SessionRoom


def session_view(room: SessionRoom) -> SessionView:
    settings = room.settings
    context = room.context.settings_now()
    active = room.active_run
    document = room.writer.document
    return SessionView(
        doc=room.doc,
        queue=room.queue,
        subject=room.membership.subject,
        running=None if active is None else active.run,
        running_reply=None if active is None else active.reply,
        last_seq=room.last_seq,
        limits=DocumentLimits(
            settings.max_pins,
            settings.max_facts,
            settings.max_session_bytes,
            context.max_fixed_tokens,
            context.fixed_limit_cause,
        ),
        accepting_prompts=not room.draining,
        subjects=room.membership.subjects,
        standing=room.membership.standing,
        token_refusal=room.membership.token_refusal,
        server_text=room.context.server_text,
        restriction_of=room.context.restriction_of,
        read_wait_s=weak_method(room.owed_read_s),  # the room keeps its view: no cycle
        readable_by_all=room.membership.everyone_may_read,
        document_bytes=lambda: document.committed_bytes,
        restricted_replies=room.restricted_replies,
        restricted_replies_by=room.restricted_replies_by,
        threads=room.side_threads.threads,
        thread_drew_on=room.side_threads.drew_on,
        thread_limits=ThreadLimits(
            settings.max_threads_per_member,
            settings.max_thread_turns,
            settings.max_thread_runs_per_session,
            settings.max_prompt_chars,
            settings.max_thread_runs_per_member,
        ),
    )


def _held(room: SessionRoom) -> tuple[object, ...]:
    """What a view of ``room`` holds by value (or as an object the room replaces, never
    changes): the rest it asks the room's parts for (their bound methods) when read."""
    active = room.active_run
    return (
        room.doc,
        room.queue,
        room.last_seq,
        room.draining,
        room.restricted_replies,
        room.restricted_replies_by,
        room.context.settings_now(),
        room.side_threads.threads,
        None if active is None else active.run,
        None if active is None else active.reply,
    )


class KeptView:
    """A room's ``SessionView``, built again only when something it holds by value is
    another object than when it was built (issue #22: built for every streamed batch, it
    cost about 12 µs a token, and a batch changes none of it). Compared by identity: an
    equal value that is a new object builds it again, never the other way round. The room
    forgets it when it closes (``forget``): the view holds the room's bound methods."""

    __slots__ = ("_held", "_view")

    def __init__(self) -> None:
        self._held: tuple[object, ...] = ()
        self._view: SessionView | None = None

    def view(self, room: SessionRoom) -> SessionView:
        held = _held(room)
        view = self._view
        if view is None or not all(map(is_, held, self._held)):
            view = self._view = session_view(room)
            self._held = held
        return view

    def forget(self) -> None:
        self._held, self._view = (), None
