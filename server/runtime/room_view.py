"""A loaded room as the session core reads it: the session as committed (``SessionView``),
with the limits the settings put on its documents and side-threads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from parley.session.core import DocumentLimits, SessionView, ThreadLimits

if TYPE_CHECKING:
    from parley.server.runtime.room import SessionRoom


def session_view(room: SessionRoom) -> SessionView:
    settings = room.settings
    active = room.active_run
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
            room.context.settings_now().max_fixed_tokens,
        ),
        accepting_prompts=not room.draining,
        subjects=room.membership.subjects,
        standing=room.membership.standing,
        token_refusal=room.membership.token_refusal,
        server_text=room.context.server_text,
        restriction_of=room.context.restriction_of,
        read_wait_s=room.owed_read_s,
        readable_by_all=room.membership.everyone_may_read,
        document_bytes=room.writer.document.committed_bytes,
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
