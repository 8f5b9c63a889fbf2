"""Presence: ``left_clients``, the awareness client ids whose sockets closed, each with its
member, when it left and the clock its leaving was told at, so that a room loaded after
an unload, a restart or on another node keeps them for their members (another member
could introduce one once the server forgot it, and its member, back, was sent that
member's state as its own).

Revision ID: presence_0024
Revises: summaries_0023
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "presence_0024"
down_revision = "summaries_0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "left_clients",
        sa.Column(
            "session_id",
            sa.String(64),
            sa.ForeignKey("sessions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("client_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("left_at", sa.BigInteger, nullable=False),
        sa.Column("clock", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_left_clients_session_left", "left_clients", ["session_id", "left_at"])


def downgrade() -> None:
    op.drop_index("ix_left_clients_session_left", table_name="left_clients")
    op.drop_table("left_clients")
