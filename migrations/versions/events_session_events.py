"""Semantic events: ``session_events``, numbered per session by ``sessions.last_event_seq``.

Revision ID: events_0011
Revises: 0010
Create Date: 2026-12-03

Sessions created before this revision start their events at 1 with the next change.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "events_0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(
            sa.Column("last_event_seq", sa.BigInteger, nullable=False, server_default="0")
        )
    op.create_table(
        "session_events",
        sa.Column(
            "session_id",
            sa.String(64),
            sa.ForeignKey("sessions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(200)),
        sa.Column("data", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("session_events")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("last_event_seq")
