"""The one door for a session's commands: parse, carry out through the core, answer once.

A socket's command frame (``handle_frame``) and a command another node forwarded here
(``server.cluster.node``) both enter through ``dispatch``, which has the session's one
writer carry out what ``session.core`` decides (``SessionWriter.execute``), so every rule
holds on every path.
"""

from __future__ import annotations

from parley.authz.tokens import ClientClaims
from parley.server.runtime.room import SessionRoom, new_id
from parley.session.commands import (
    Command,
    CommandError,
    MessageCommand,
    PromptCommand,
    ack,
    command_id_of,
    error_reply,
    parse_command,
)
from parley.session.core import CommandEvent
from parley.session.core.threads import FROM_THREAD
from parley.session.entries import EntryKind
from parley.session.errors import Conflict, DuplicateCommand, NotFound, ParleyError
from parley.session.ratelimit import Cost, Spend
from parley.session.recent_acks import kept_as_ack, stored_fingerprints
from parley.session.thread_commands import ThreadShareCommand


async def handle_frame(
    room: SessionRoom, actor: str, frame: str, token: ClientClaims | None = None
) -> str:
    """Parse one JSON command frame of ``actor`` (sent with the client token of claims
    ``token``) and return its single reply."""
    try:
        command = parse_command(frame, room.limits)
    except CommandError as exc:
        room.metrics.errors.labels(code=exc.code.value).inc()
        return error_reply(exc.command_id, exc)
    return await dispatch(room, actor, command, token)


async def dispatch(
    room: SessionRoom, actor: str, command: Command, token: ClientClaims | None = None
) -> str:
    """Carry out ``actor``'s ``command`` (judged by the member's rights now, and by
    ``token``, the claims of the client token it was sent with, as of its commit) and return
    its single reply: the ack, or the error. A resent command is answered with its first
    ack (``RecentAcks``; for prompts and messages, from the store too)."""
    event = CommandEvent(actor, command, room.now_ms(), new_id(), token=token)
    try:
        recent = room.recent_acks.answer(actor, command)
        if recent is not None:
            return recent
        kept = await kept_ack(room, actor, command)
        if kept is not None:
            room.recent_acks.keep(actor, command, kept)  # the next resend: no read
            return kept
        try:
            effects = await room.writer.execute(event)
        except Conflict:  # ``DuplicateCommand`` among them (the same sent twice at once)
            previous = await _previous_ack(room, actor, command)
            if previous is not None:
                room.recent_acks.keep(actor, command, previous)  # the next resend: no read
                return previous
            raise
    except ParleyError as exc:
        room.metrics.errors.labels(code=exc.code.value).inc()
        return error_reply(command.id, exc)
    assert effects.ack is not None  # every command the core carries out is acknowledged
    reply = effects.ack.reply(command.id)
    room.recent_acks.keep(actor, command, reply)
    return reply


def resend_allowed(room: SessionRoom, actor: str, now: float) -> bool:
    """Spend one of ``actor``'s resend allowance (``Spend.RESENDS``: a reconnect's worth at
    once, then the command rate), shared by their sockets and REST; False when it is spent.
    Every command past the command rate that may be a resend pays it before it is answered,
    from the recent acks, the store or another node (review: one acknowledged command
    resent past the rate was answered from memory without limit), so a flood of resends
    ends ``rate_limited`` while a reconnect's resends get their first answers."""
    return room.budgets.allow(actor, Cost(Spend.RESENDS, 1), now)


async def stored_resend(room: SessionRoom, actor: str, frame: str) -> str | None:
    """The first ack of ``frame`` if it resends a prompt, message or share ``actor`` stored
    (the same kind, the same text), or a command whose ack was kept (the same command),
    else None: such a resend is answered past the rate,
    after a restart too (review: an SDK's resends of stored prompts were refused
    ``rate_limited``). Nothing else passes by a stored id (review of the mend: any command
    under a stored message's id went past the rate, 1000 in a second)."""
    command_id = command_id_of(frame)
    if command_id is None or not await _may_have_stored(room, actor, command_id):
        return None
    try:
        command = parse_command(frame, room.limits)
        previous = await _previous_ack(room, actor, command)
    except (CommandError, DuplicateCommand):
        return None
    if previous is not None:
        room.recent_acks.keep(actor, command, previous)  # the next resend: no read
    return previous


async def kept_ack(room: SessionRoom, actor: str, command: Command) -> str | None:
    """The ack kept of ``command`` if ``actor`` sent it before (a resend after a restart,
    or one the recent acks no longer hold) and it stored no entry: a pin, a fact, a policy,
    a cancel, a side-thread's open, prompt or close (review: a pin resent after a restart
    pinned again what another member had unpinned meanwhile; an open resent after its
    thread's deletion opened it again; a forwarded REST write run again by the next runner
    of its session, FX66). ``DuplicateCommand`` when the id was another
    command's, of any kind (a session prompt's or message's too); None when it is new to
    the store."""
    if not await _may_have_stored(room, actor, command.id):
        return None
    kept = await room.store.command_ack(room.session_id, actor, command.id)
    if kept is None:
        if kept_as_ack(command) and await _stored_entry(room, actor, command):
            raise DuplicateCommand(command.id)  # a prompt's or a message's id
        return None
    fingerprint, reply = kept
    if not kept_as_ack(command) or fingerprint not in stored_fingerprints(command):
        raise DuplicateCommand(command.id)
    return reply


async def _stored_entry(room: SessionRoom, actor: str, command: Command) -> bool:
    """Whether ``actor`` stored a session entry with ``command``'s id (review: a side-thread
    prompt reusing a stored prompt's id was run, two commands under one id, once a restart
    had emptied the recent acks)."""
    if not await _may_have_stored(room, actor, command.id):
        return False
    return await room.store.entry_by_command(room.session_id, actor, command.id) is not None


async def _may_have_stored(room: SessionRoom, actor: str, command_id: str) -> bool:
    """Whether ``actor`` may have stored an entry or an ack under ``command_id`` (the
    session's stored command ids, read once and kept in memory): False is sure, True asks
    the store."""
    sent = room.writer.sent
    await sent.read(room.last_seq, for_resends=True)
    return sent.stored_before(actor, command_id)


_STORED = {
    PromptCommand: (EntryKind.PROMPT, "prompt_id"),
    MessageCommand: (EntryKind.MESSAGE, "message_id"),
    ThreadShareCommand: (EntryKind.MESSAGE, "message_id"),
}


async def _previous_ack(room: SessionRoom, actor: str, command: Command) -> str | None:
    """The ack a resent command got the first time, if a command of its kind was stored
    (even when the queue is full or busy now): from its entry, or its kept ack."""
    if kept_as_ack(command):
        return await kept_ack(room, actor, command)
    stored = _STORED.get(type(command))
    if stored is None:
        return None
    kind, id_key = stored
    row = await room.store.entry_by_command(room.session_id, actor, command.id)
    if row is None or row.kind != kind.value:
        return None
    sharing = isinstance(command, ThreadShareCommand)
    text: str | None = getattr(command, "text", None)  # a share of picked turns has none
    if (kind is EntryKind.MESSAGE and _shared(room, row.id) != sharing) or (
        text is not None and row.text != text
    ):
        # Another command under the id (review: a share under a stored message's id, with
        # other text, was acked as that message after a restart, and nothing was shared).
        raise DuplicateCommand(command.id)
    return ack(command.id, seq=row.seq, **{id_key: row.id})


def _shared(room: SessionRoom, entry_id: str) -> bool:
    """Whether the message ``entry_id`` was shared back from a side-thread."""
    try:
        return room.doc.entry(entry_id).source == FROM_THREAD
    except NotFound:
        return False
