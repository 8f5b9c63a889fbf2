"""The acknowledgements of the commands that store no entry (``command_acks``): a pin, a
fact, a policy, a cancel or a side-thread's close resent under its id after a restart is
answered with its first ack, not carried out again.

Revision ID: commands_0019
Revises: events_0018
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "commands_0019"
down_revision = "events_0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "command_acks",
        sa.Column(
            "session_id",
            sa.String(64),
            sa.ForeignKey("sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("command_id", sa.String(128), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("reply", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("session_id", "author", "command_id", name="uq_command_acks_command"),
    )
    op.create_index("ix_command_acks_session_created", "command_acks", ["session_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_command_acks_session_created", table_name="command_acks")
    op.drop_table("command_acks")
