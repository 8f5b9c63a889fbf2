"""Private side-threads: ``side_threads`` and their turns, ``side_thread_turns``.

Revision ID: threads_0016
Revises: client_0015
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "threads_0016"
down_revision = "client_0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "side_threads",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "session_id",
            sa.String(64),
            sa.ForeignKey("sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("anchor_seq", sa.BigInteger, nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("command_id", sa.String(128), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_side_threads_session_id", "side_threads", ["session_id"])
    op.create_table(
        "side_thread_turns",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column(
            "thread_id",
            sa.String(64),
            sa.ForeignKey("side_threads.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "session_id",
            sa.String(64),
            sa.ForeignKey("sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("ordinal", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason_code", sa.String(32), nullable=True),
        sa.Column("restriction", sa.Text, nullable=False),
        sa.Column("summarise", sa.Boolean, nullable=False),
        sa.Column("command_id", sa.String(128), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_side_thread_turns_thread_id", "side_thread_turns", ["thread_id"])


def downgrade() -> None:
    op.drop_index("ix_side_thread_turns_thread_id", table_name="side_thread_turns")
    op.drop_table("side_thread_turns")
    op.drop_index("ix_side_threads_session_id", table_name="side_threads")
    op.drop_table("side_threads")
