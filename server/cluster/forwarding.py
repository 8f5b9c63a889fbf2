"""Commands a node forwards to the node that runs the session, through ``session_commands``.

The receiving node stores the frame and notifies; the running node executes open commands
in id order and writes each reply, then notifies the command's id (with the reply inline
when it fits in a notification). Commands carry the client's id, so one executed twice
(the running node died between its commit and writing the reply) gets its first ack. A
member's command carries the claims of the client token it was sent with (verified by the
node that received it), so the running node judges it by that token at its commit, as it
judges its own sockets' (revoked, or from the link of a maker who may no longer make it).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.authz.tokens import ClientClaims
from parley.server.cluster.tables import session_commands
from parley.server.store.rows import claims_column, claims_of

CHANNEL_COMMAND = "parley_command"  # payload: session id (a forwarded command waits)
CHANNEL_RESULT = "parley_result"  # payload: "<command id>" or "<command id> <reply JSON>"
MAX_NOTIFY_BYTES = 7900  # PostgreSQL refuses payloads of 8000 bytes and more


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
        self,
        session_id: str,
        user_id: str,
        frame: str,
        now_ms: int,
        token: ClientClaims | None = None,
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
                        created_at=now_ms,
                    )
                    .returning(session_commands.c.id)
                )
            ).scalar_one()
            await connection.execute(select(func.pg_notify(CHANNEL_COMMAND, session_id)))
        return int(command_id)

    async def open_commands(self, session_id: str, limit: int) -> list[OpenCommand]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(
                    session_commands.c.id,
                    session_commands.c.user_id,
                    session_commands.c.frame,
                    session_commands.c.token_claims,
                )
                .where(
                    and_(
                        session_commands.c.session_id == session_id,
                        session_commands.c.result.is_(None),
                    )
                )
                .order_by(session_commands.c.id)
                .limit(limit)
            )
            return [
                OpenCommand(int(r.id), r.user_id, r.frame, claims_of(r.token_claims)) for r in rows
            ]

    async def answer(self, answers: list[tuple[int, str]]) -> None:
        """Store the replies and tell the forwarding nodes, in one transaction."""
        if not answers:
            return
        async with self.engine.begin() as connection:
            for command_id, reply in answers:
                await connection.execute(
                    update(session_commands)
                    .where(session_commands.c.id == command_id)
                    .values(result=reply)
                )
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
        return None if value is None else str(value)

    async def forget_answered(self, before_ms: int) -> None:
        """Bound the table: answered commands older than ``before_ms`` are dropped."""
        async with self.engine.begin() as connection:
            await connection.execute(
                delete(session_commands).where(
                    and_(
                        session_commands.c.result.is_not(None),
                        session_commands.c.created_at < before_ms,
                    )
                )
            )
