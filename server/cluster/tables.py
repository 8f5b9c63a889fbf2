"""Cluster tables (migration 0008), on the shared metadata so Alembic sees them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    String,
    Table,
    Text,
    literal_column,
    or_,
)
from sqlalchemy.sql.elements import ColumnElement

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
# ``result`` of a command the running node took and has not answered yet (no reply is
# empty): a state of its own, so a row stored before it came still reads as open; and the
# same as SQL's literal.
TAKEN = ""
TAKEN_RESULT: ColumnElement[str] = literal_column("''", Text)
# A session's commands not answered yet (open or taken): what a take reads, in id order.
# Written with the literal, not a bound value, so that PostgreSQL can prove a query's
# condition implies the index's and use it.
UNANSWERED = or_(session_commands.c.result.is_(None), session_commands.c.result == TAKEN_RESULT)
# Partial: an answered command's result is not in it. It was a column of the index, and a
# forwarded REST write's answer (all the session's facts) past 2,704 bytes, a PostgreSQL
# btree entry's limit, could not be stored: the command was never answered (FX77).
Index(
    "ix_session_commands_open",
    session_commands.c.session_id,
    session_commands.c.id,
    postgresql_where=UNANSWERED,
    sqlite_where=UNANSWERED,
)
