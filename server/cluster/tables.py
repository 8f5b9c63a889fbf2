"""Cluster tables (migration 0008), on the shared metadata so Alembic sees them."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, ForeignKey, Index, String, Table, Text

from parley.server.store.tables import BigId, metadata

# Who runs a session's queue: the holder, until ``expires_at`` (database clock). ``epoch``
# grows on every takeover; each write of the holder checks it in its own transaction.
# ``members_version`` grows with every change of the session's members or client tokens
# (``lock_session``): the holder's fence reads it, and the members as stored when it moved.
session_leases = Table(
    "session_leases",
    metadata,
    Column(
        "session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("holder", String(200), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("members_version", BigInteger, nullable=False, server_default="0"),
)

# Commands a node received for a session another node holds; the holder runs them in id
# order and writes the reply (the ack or error the client gets) into ``result``.
session_commands = Table(
    "session_commands",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", String(200), nullable=False),
    Column("frame", Text, nullable=False),
    # The claims of the client token a member's command was sent with, as JSON (NULL: none
    # known, or a REST change): the running node judges the command by them at its commit.
    Column("token_claims", Text),
    Column("origin", String(200), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("result", Text),
)
Index(
    "ix_session_commands_open",
    session_commands.c.session_id,
    session_commands.c.result,
    session_commands.c.id,
)
