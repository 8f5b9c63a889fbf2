"""JSON commands on a session socket: authorize, run against the room, answer once."""

from __future__ import annotations

from collections.abc import Awaitable

from authz.policy import Cancel, Do, decide
from authz.roles import Capability
from server.connection import Connection
from server.room import SessionRoom
from session.commands import (
    CancelCommand,
    CommandError,
    FactCommand,
    MessageCommand,
    PinCommand,
    PolicyCommand,
    PromptCommand,
    ack,
    error_reply,
    parse_command,
)
from session.errors import Conflict, Forbidden, NotFound, ParleyError
from session.reasons import Ending, ReasonCode
from session.schema import EntryKind


async def handle_command(room: SessionRoom, connection: Connection, frame: str) -> str:
    """Run one JSON command and return its single reply (ack or error)."""
    try:
        command = parse_command(frame, room.limits)
    except CommandError as exc:
        room.metrics.errors.labels(code=exc.code.value).inc()
        return error_reply(exc.command_id, exc)
    user_id = connection.user_id
    what = f"command {type(command).__name__}"
    try:
        if isinstance(command, PromptCommand):
            await room.check(user_id, Do(Capability.PROMPT), what)
            stored = room.add_prompt(user_id, command.id, command.text)
            return await _store_once(room, user_id, command.id, stored, EntryKind.PROMPT)
        if isinstance(command, MessageCommand):
            await room.check(user_id, Do(Capability.POST_MESSAGE), what)
            stored = room.add_message(user_id, command.id, command.text)
            return await _store_once(room, user_id, command.id, stored, EntryKind.MESSAGE)
        if isinstance(command, PinCommand):
            await room.check(user_id, Do(Capability.PIN), what)
            await room.set_pinned(command.entry_id, command.pinned)
            return ack(command.id, entry_id=command.entry_id)
        if isinstance(command, FactCommand):
            await room.check(user_id, Do(Capability.PIN), what)
            await room.set_fact(command.key, command.value, user_id)
            return ack(command.id, key=command.key)
        if isinstance(command, PolicyCommand):
            await room.check(user_id, Do(Capability.MANAGE_SESSION), what)
            before = room.queue.policy.value
            await room.set_policy(command.policy)
            if before != command.policy.value:
                change = {"from": before, "to": command.policy.value}
                await room.audit("policy", user_id, {"policy": change})
            return ack(command.id, policy=command.policy.value)
        return await _cancel(room, user_id, command)
    except ParleyError as exc:
        room.metrics.errors.labels(code=exc.code.value).inc()
        return error_reply(command.id, exc)


async def _store_once(
    room: SessionRoom,
    user_id: str,
    command_id: str,
    stored: Awaitable[tuple[int, str]],
    kind: EntryKind,
) -> str:
    """Ack a newly stored entry, or answer a resent command with its first ack (even when
    the queue is full or busy now); any other refusal is the error it is."""
    try:
        seq, entry_id = await stored
    except Conflict:  # ``DuplicateCommand`` among them
        previous = await _previous_ack(room, user_id, command_id, kind)
        if previous is not None:
            return previous
        raise
    return ack(command_id, seq=seq, **{_ID_KEY[kind]: entry_id})


_ID_KEY = {EntryKind.PROMPT: "prompt_id", EntryKind.MESSAGE: "message_id"}


async def _previous_ack(
    room: SessionRoom, user_id: str, command_id: str, kind: EntryKind
) -> str | None:
    """The ack a resent command got the first time, if a command of its kind was stored."""
    row = await room.store.entry_by_command(room.session_id, user_id, command_id)
    if row is None or row.kind != kind.value:
        return None
    return ack(command_id, seq=row.seq, **{_ID_KEY[kind]: row.id})


async def _cancel(room: SessionRoom, user_id: str, command: CancelCommand) -> str:
    prompt_id = command.prompt_id
    await room.check(user_id, Do(Capability.READ_SESSION), "command CancelCommand")
    if not room.doc.has_entry(prompt_id) or room.doc.entry(prompt_id).kind is not EntryKind.PROMPT:
        raise NotFound(f"no prompt {prompt_id!r} in this session")
    entry = room.doc.entry(prompt_id)
    await room.check(user_id, Cancel(entry.author), "command CancelCommand")
    cancelled = Ending(ReasonCode.CANCELLED, f"cancelled by {user_id}")
    if await room.cancel_waiting(prompt_id, cancelled):
        return ack(command.id, seq=entry.seq, prompt_id=prompt_id)
    active = room.active_run
    if active is None or prompt_id not in active.run.ids:
        status = room.doc.entry(prompt_id).status
        raise Conflict(f"prompt {prompt_id!r} is {status}; it can no longer be cancelled")
    subject = room.subject(user_id)
    others = [p.author for p in active.run.prompts if p.author != user_id]
    if others and not decide(subject, Cancel(others[0])).allowed:
        raise Forbidden("the running reply also answers other members' prompts")
    active.stop(cancelled)
    await active.wait()
    return ack(command.id, seq=entry.seq, prompt_id=prompt_id)
