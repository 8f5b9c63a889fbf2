"""Commands across nodes: a command for a session run elsewhere is stored, run by the node
that runs the session, and its reply comes back here; and the other side, running the
forwarded commands of the sessions this node runs, in id order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING

from parley.authz.tokens import ClientClaims
from parley.server.cluster.forwarding import (
    MAYBE_STORED,
    NOT_STORED,
    CommandTable,
    OpenCommand,
    Withdrawal,
)
from parley.server.runtime.commands import handle_frame, stored_resend
from parley.server.runtime.room import SessionRoom
from parley.server.runtime.session_writes import apply_session_write
from parley.session.commands import command_id_of, error_reply
from parley.session.errors import NotFound, ParleyError, RateLimited, Unavailable

if TYPE_CHECKING:
    from parley.server.cluster.node import ClusterNode

log = logging.getLogger("parley.cluster")
# The sender of a forwarded REST change: no user id can contain "!", so no member is it.
ADMIN_SENDER = "!admin"
# Before a member's id (no user id has it): answer the command only if it is a resend of
# what the running node acknowledged lately, else refuse it ``rate_limited`` (the member
# is over their rate on the node that forwarded it).
RESENDS_ONLY = "~"


def resends_only(user_id: str) -> str:
    return RESENDS_ONLY + user_id


def _member_of(sender: str) -> str:
    return sender.removeprefix(RESENDS_ONLY)


MAX_TAIL_PAGES = 100
COMMAND_BATCH = 200
FORWARD_POLL_S = 0.5


def unavailable(reply: str) -> bool:
    """Whether a command's reply is the error ``unavailable`` (a write fenced, say)."""
    with contextlib.suppress(ValueError):
        answer = json.loads(reply)
        return isinstance(answer, dict) and answer.get("code") == Unavailable.code.value
    return False


def _answer_of(command: OpenCommand, outcome: str | BaseException) -> tuple[int, str]:
    if isinstance(outcome, BaseException):
        # Answered, so a command that crashes cannot block the ones after it.
        log.error("forwarded command failed", exc_info=outcome)
        return command.id, error_reply(command_id_of(command.frame), ParleyError("internal error"))
    return command.id, outcome


class CommandRelay:
    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.table = CommandTable(node.store.engine, node.node_id)
        self._wanted: set[str] = set()  # sessions run here with forwarded commands to run
        self._draining: set[str] = set()
        self._results: dict[int, asyncio.Future[str]] = {}

    def wanted(self, session_id: str) -> None:
        """Look for forwarded commands of ``session_id`` (run here) on the next round."""
        self._wanted.add(session_id)
        self.node.wake()

    def take_wanted(self) -> set[str]:
        wanted, self._wanted = self._wanted, set()
        return wanted

    async def forward(
        self, room: SessionRoom, user_id: str, frame: str, token: ClientClaims | None = None
    ) -> str:
        """Have the node that runs the session run ``frame`` of ``user_id`` (sent with the
        client token of claims ``token``) and return its reply."""
        session_id = room.session_id
        try:
            command_id = await self.table.submit(session_id, user_id, frame, token)
        except Exception:
            self.node.metrics.forwarded.labels(outcome="unstored").inc()
            unstored = Unavailable("the database is unavailable")
            return error_reply(command_id_of(frame), await self._gone_or(session_id, unstored))
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._results[command_id] = future
        timeout_s = self.node.settings.forward_timeout_s
        try:
            reply = await self._answer_within(room, command_id, future, timeout_s)
            if reply is None:
                # Given up: withdrawn, so "nothing was stored" stays true (review RM-1);
                # unless the running node took it already: then its answer is on its way.
                try:
                    fate = await self.table.withdraw(command_id)
                except Exception:
                    fate = Withdrawal.TAKEN  # unknown: as if taken
                if isinstance(fate, str):
                    reply = fate
                elif fate is Withdrawal.TAKEN:
                    reply = await self._answer_within(room, command_id, future, timeout_s)
                    if reply is None:
                        self.node.metrics.forwarded.labels(outcome="unknown").inc()
                        return error_reply(command_id_of(frame), Unavailable(MAYBE_STORED))
        finally:
            self._results.pop(command_id, None)
        if reply is not None:
            self.node.metrics.forwarded.labels(outcome="answered").inc()
            return reply
        self.node.metrics.forwarded.labels(outcome="timeout").inc()
        unanswered = Unavailable(NOT_STORED)
        return error_reply(command_id_of(frame), await self._gone_or(session_id, unanswered))

    async def _answer_within(
        self, room: SessionRoom, command_id: int, future: asyncio.Future[str], timeout_s: float
    ) -> str | None:
        """The reply to forwarded command ``command_id`` if it comes within ``timeout_s``
        (notified through ``future``, or read from the table every ``FORWARD_POLL_S``)."""
        session_id = room.session_id
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(FORWARD_POLL_S, remaining)):
                    return await asyncio.shield(future)
            with contextlib.suppress(Exception):
                result = await self.table.result(command_id)
                if result is not None:
                    return result
                if (
                    session_id not in self.node.running
                    and session_id not in self.node.live_elsewhere
                ):
                    # The running node may be gone: take the session (and this command).
                    await self.node.promote(room)
        return None

    async def _gone_or(self, session_id: str, refusal: ParleyError) -> ParleyError:
        """``refusal``, or ``NotFound`` when the session was deleted (on another node, its
        notice not read here yet): a forwarded command is not stored for a session that is
        gone, or goes with it (FX44: a prompt on a node that lost a deleted session was
        told "the database is unavailable", then its socket closed 4404)."""
        try:
            gone = await self.node.store.get_session(session_id) is None
        except Exception:
            return refusal  # the database, then
        return NotFound("this session was deleted") if gone else refusal

    async def drain(self, session_id: str) -> None:
        """Run the forwarded commands of a session this node runs, in id order."""
        if session_id in self._draining:
            self._wanted.add(session_id)  # look again when this drain ends
            return
        self._draining.add(session_id)
        try:
            await self._run_open_commands(session_id)
        except Exception as exc:
            # Left open in the table: the next poll (or notification) tries again.
            log.warning("forwarded commands failed", extra={"error": repr(exc)})
        finally:
            self._draining.discard(session_id)
            if session_id in self._wanted:
                self.node.wake()  # a command came in while this drain was ending

    async def settle(self, room: SessionRoom) -> None:
        """Run (or expire) the forwarded commands of a session this node has just taken,
        before it serves any write of its own: a command its previous runner never
        answered lands before them, never after a newer acknowledged write (review
        RM-3). The lease is held; the caller marks the session run here once it returns."""
        for _ in range(MAX_TAIL_PAGES):
            if not await self._run_taken(room):
                return
        self.wanted(room.session_id)  # a very long backlog: the rest by the drain

    async def _run_open_commands(self, session_id: str) -> None:
        """Run the open forwarded commands of a session run here, in id order."""
        for _ in range(MAX_TAIL_PAGES):
            room = self.node.registry.loaded(session_id)
            if room is None or room.draining or not await self.node.lease_holds(room):
                # Draining (SIGTERM): left open for the node that runs the session next, as
                # after a crash; refused here, a member on a healthy node was told to send it
                # again after reconnecting, and their socket never closed (review rx-1).
                return
            if room.draining:  # begun while the lease was asked for (FX68)
                return
            if not await self._run_taken(room):
                return

    async def _run_taken(self, room: SessionRoom) -> bool:
        """Take a page of the session's forwarded commands, run them and answer them;
        False when there were none, the lease was lost meanwhile, or the room began to
        drain (SIGTERM) meanwhile: what it had not run then is handed back open, for the
        node that runs the session next (FX68: a drain begun as the page was taken, or as
        a command waited for the writer, refused a healthy node's member "the server is
        shutting down; send it again after reconnecting" on a socket that stayed open)."""
        session_id = room.session_id
        timeout_s = self.node.settings.forward_timeout_s
        taken = await self.table.take(session_id, COMMAND_BATCH, timeout_s)
        if not taken:
            return False
        for user_id in {_member_of(c.user_id) for c in taken} - {ADMIN_SENDER}:
            # Membership may have changed on another node: read it fresh.
            member = await self.node.store.get_member(session_id, user_id)
            await room.membership.set_member(
                user_id, None if member is None else member.as_member()
            )
        if room.draining:
            await self.table.reopen([c.id for c in taken])
            return False
        outcomes = await asyncio.gather(
            *(self._run_forwarded(room, c.user_id, c.frame, c.token) for c in taken),
            return_exceptions=True,
        )
        if session_id not in self.node.leases:
            return False  # fenced meanwhile: the next holder answers them
        answers = [_answer_of(c, o) for c, o in zip(taken, outcomes, strict=True)]
        # Refused ``unavailable`` in a room draining now: nothing of it stored (or, its
        # commit's outcome unknown, the next runner answers it with its first ack).
        handed_back = {i for i, reply in answers if room.draining and unavailable(reply)}
        await self.table.answer([x for x in answers if x[0] not in handed_back])
        await self.table.reopen(sorted(handed_back))
        return not handed_back

    async def _run_forwarded(
        self, room: SessionRoom, user_id: str, frame: str, token: ClientClaims | None
    ) -> str:
        if user_id == ADMIN_SENDER:
            write = json.loads(frame)
            try:
                result = await apply_session_write(room, write)
            except ParleyError as exc:  # answered by the REST call: its details too
                return error_reply(command_id_of(frame), exc, details=True)
            return json.dumps({"type": "ack", "id": write.get("id"), "result": result})
        # The member's command budget is the running node's too: every node's commands of
        # the session pass here, so the budget is one per member, not one per node (review:
        # 227 commands in 2.8 s through two nodes against a budget of 115). A resend of
        # what was acknowledged lately is answered as it was, whatever the rate.
        only_resends = user_id.startswith(RESENDS_ONLY)
        user_id = _member_of(user_id)
        now, bucket = room.clock(), room.user_bucket(user_id)
        if only_resends or not bucket.allow(now):
            command_id = command_id_of(frame)  # read only for a command over the rate
            if not room.recent_acks.knows(user_id, command_id):
                resent = await stored_resend(room, user_id, frame)
                if resent is not None:
                    return resent
                # When the member's budget has a command again, as a socket's refusal on
                # this node says (the node that forwarded ``only_resends`` adds its own).
                refusal = RateLimited("too many commands; slow down", bucket.wait_s(now))
                return error_reply(command_id, refusal)
        # The same door as a socket's command, judged by the member's rights here now and
        # by the token it was sent with as of its commit.
        return await handle_frame(room, user_id, frame, token)

    def on_result(self, payload: str) -> None:
        head, _, reply = payload.partition(" ")
        future = self._results.get(int(head))
        if future is None or future.done():
            return
        if reply:
            future.set_result(reply)
        else:
            self.node.spawn(self._fetch_result(int(head), future))

    async def _fetch_result(self, command_id: int, future: asyncio.Future[str]) -> None:
        result = await self.table.result(command_id)
        if result is not None and not future.done():
            future.set_result(result)
