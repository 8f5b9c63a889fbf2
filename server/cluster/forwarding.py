"""Commands a node forwards to the node that runs the session, through ``session_commands``.

The receiving node stores the frame and notifies; the running node executes open commands
in id order and writes each reply, then notifies the command's id (with the reply inline
when it fits in a notification). Commands carry the client's id, so one executed twice
(the running node died between its commit and writing the reply) gets its first ack.

A command is *open* (``result`` NULL), *taken* (``TAKEN``: the running node runs it) or
*answered*. The forwarding node that gives up on an open one withdraws it (deletes it) in
one statement, which a take cannot interleave with: a command answered "nothing was
stored" never runs later (review RM-1). The running node expires, as it takes them, open
commands older than the forward timeout (their sender was answered or is gone) and taken
ones older than twice that (``expire_taken_s``: answered "may have been stored"), so a
command nobody waits for never lands after newer acknowledged writes (review RM-3). Times
are the database's clock, the same for every node. A
member's command carries the claims of the client token it was sent with (verified by the
node that received it), so the running node judges it by that token at its commit, as it
judges its own sockets' (revoked, or from the link of a maker who may no longer make it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy import BigInteger, cast, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley.authz.tokens import ClientClaims
from parley.server.cluster.lease import database_errors
from parley.server.cluster.tables import TAKEN, TAKEN_RESULT, UNANSWERED, session_commands
from parley.server.store.rows import claims_column, claims_of
from parley.session.commands import command_id_of, error_reply
from parley.session.errors import Unavailable

CHANNEL_COMMAND = "parley_command"  # payload: session id (a forwarded command waits)
CHANNEL_RESULT = "parley_result"  # payload: "<command id>" or "<command id> <reply JSON>"
MAX_NOTIFY_BYTES = 7900  # PostgreSQL refuses payloads of 8000 bytes and more
# The database's clock, in milliseconds: ``created_at`` and every age compared with it.
DB_NOW_MS = cast(func.extract("epoch", func.clock_timestamp()) * 1000, BigInteger)
NOT_STORED = "the node running this session did not answer; nothing was stored: send it again"
MAYBE_STORED = (
    "the node running this session did not answer in time; it may have been stored:"
    " send it again with the same id to learn its answer"
)


class Withdrawal(enum.Enum):
    """What became of a command its forwarding node gave up on (``withdraw``), unless it
    was answered: then its reply."""

    WITHDRAWN = "withdrawn"  # open: deleted now, so it never runs
    TAKEN = "taken"  # being run by the running node: its answer is on its way
    GONE = "gone"  # expired unrun, or the session deleted: it never runs


def expire_taken_s(forward_timeout_s: float) -> float:
    """How old a taken, unanswered command is when it expires: its forwarding node waits
    ``forward_timeout_s`` for an answer, and as much again once it is taken."""
    return 2 * forward_timeout_s


@dataclass(frozen=True, slots=True)
class OpenCommand:
    id: int
    user_id: str
    frame: str
    token: ClientClaims | None = None


class CommandTable:
    def __init__(self, engine: AsyncEngine, node_id: str) -> None:
        self.engine = engine
        self.node_id = node_id

    async def submit(
        self, session_id: str, user_id: str, frame: str, token: ClientClaims | None = None
    ) -> int:
        async with self.engine.begin() as connection:
            command_id = (
                await connection.execute(
                    insert(session_commands)
                    .values(
                        session_id=session_id,
                        user_id=user_id,
                        frame=frame,
                        token_claims=claims_column(token),
                        origin=self.node_id,
                        created_at=DB_NOW_MS,
                    )
                    .returning(session_commands.c.id)
                )
            ).scalar_one()
            await connection.execute(select(func.pg_notify(CHANNEL_COMMAND, session_id)))
        return int(command_id)

    async def take(
        self, session_id: str, limit: int, forward_timeout_s: float
    ) -> list[OpenCommand]:
        """The session's first ``limit`` commands to run, in id order, marked taken (with
        those taken before and never answered: their runner stopped), once the expired ones
        are settled: open ones older than ``forward_timeout_s`` deleted, taken ones older
        than ``expire_taken_s`` answered ``unavailable`` (may have been stored)."""
        open_ms = int(forward_timeout_s * 1000)
        taken_ms = int(expire_taken_s(forward_timeout_s) * 1000)
        unanswered = UNANSWERED
        async with self.engine.begin() as connection:
            await connection.execute(
                delete(session_commands).where(
                    session_commands.c.session_id == session_id,
                    session_commands.c.result.is_(None),
                    session_commands.c.created_at < DB_NOW_MS - open_ms,
                )
            )
            expired = await connection.execute(
                select(session_commands.c.id, session_commands.c.frame)
                .where(
                    session_commands.c.session_id == session_id,
                    session_commands.c.result == TAKEN_RESULT,
                    session_commands.c.created_at < DB_NOW_MS - taken_ms,
                )
                .with_for_update()
            )
            refusal = Unavailable(MAYBE_STORED)
            await self._answer(
                connection,
                [(int(r.id), error_reply(command_id_of(r.frame), refusal)) for r in expired],
            )
            first = (
                select(session_commands.c.id)
                .where(session_commands.c.session_id == session_id, unanswered)
                .order_by(session_commands.c.id)
                .limit(limit)
                .with_for_update()
            )
            rows = await connection.execute(
                update(session_commands)
                .where(session_commands.c.id.in_(first.scalar_subquery()), unanswered)
                .values(result=TAKEN)
                .returning(
                    session_commands.c.id,
                    session_commands.c.user_id,
                    session_commands.c.frame,
                    session_commands.c.token_claims,
                )
            )
            taken = [
                OpenCommand(int(r.id), r.user_id, r.frame, claims_of(r.token_claims)) for r in rows
            ]
        return sorted(taken, key=lambda command: command.id)

    async def withdraw(self, command_id: int) -> Withdrawal | str:
        """Give up on a command this node forwarded: deleted if still open, in one
        statement a take waits for (or that waits for a take); else its reply if
        answered, or what became of it."""
        async with self.engine.begin() as connection:
            deleted = (
                await connection.execute(
                    delete(session_commands)
                    .where(session_commands.c.id == command_id, session_commands.c.result.is_(None))
                    .returning(session_commands.c.id)
                )
            ).first()
            if deleted is not None:
                return Withdrawal.WITHDRAWN
            result = (
                await connection.execute(
                    select(session_commands.c.result).where(session_commands.c.id == command_id)
                )
            ).first()
        if result is None:
            return Withdrawal.GONE
        return Withdrawal.TAKEN if result.result in (None, TAKEN) else str(result.result)

    async def reopen(self, command_ids: list[int]) -> None:
        """Hand taken commands back unanswered: open again, as if never taken, for the
        node that runs the session next (this one began to drain as it took them); their
        forwarding nodes may withdraw them meanwhile, as any open one."""
        if command_ids:
            async with self.engine.begin() as connection:
                taken = session_commands.c.result == TAKEN_RESULT
                await connection.execute(
                    update(session_commands)
                    .where(session_commands.c.id.in_(command_ids), taken)
                    .values(result=None)
                )

    async def answer(self, answers: list[tuple[int, str]]) -> None:
        """Store the replies and tell the forwarding nodes, in one transaction."""
        if answers:
            async with self.engine.begin() as connection:
                await self._answer(connection, answers)

    @staticmethod
    async def _answer(connection: AsyncConnection, answers: list[tuple[int, str]]) -> None:
        """Answer the commands still unanswered (one expired meanwhile keeps its answer)."""
        for command_id, reply in answers:
            answered = await connection.execute(
                update(session_commands)
                .where(
                    session_commands.c.id == command_id,
                    UNANSWERED,
                )
                .values(result=reply)
            )
            if answered.rowcount:
                payload = f"{command_id} {reply}"
                if len(payload.encode()) > MAX_NOTIFY_BYTES:
                    payload = str(command_id)
                await connection.execute(select(func.pg_notify(CHANNEL_RESULT, payload)))

    async def result(self, command_id: int) -> str | None:
        async with self.engine.connect() as connection:
            value = (
                await connection.execute(
                    select(session_commands.c.result).where(session_commands.c.id == command_id)
                )
            ).scalar_one_or_none()
        return None if value is None or value == TAKEN else str(value)

    async def prune(self, kept_s: float) -> None:
        """Bound the table: every command older than ``kept_s``, answered or not, is
        dropped (a session nobody runs any more expires none of its own). ``Unavailable``
        if the database fails."""
        async with database_errors(), self.engine.begin() as connection:
            await connection.execute(
                delete(session_commands).where(
                    session_commands.c.created_at < DB_NOW_MS - int(kept_s * 1000)
                )
            )
