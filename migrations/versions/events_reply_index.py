"""A partial index of the events that start and end a reply (``ix_session_events_replies``):
an event stream that opens reads back through these alone to find the reply running, not
through every event of a session of many messages and few runs.

Revision ID: events_0018
Revises: threads_0017
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "events_0018"
down_revision = "threads_0017"
branch_labels = None
depends_on = None

REPLY_EVENTS = "kind IN ('reply_completed', 'run_failed', 'run_started')"


def upgrade() -> None:
    op.create_index(
        "ix_session_events_replies",
        "session_events",
        ["session_id", "seq"],
        postgresql_where=sa.text(REPLY_EVENTS),
        sqlite_where=sa.text(REPLY_EVENTS),
    )


def downgrade() -> None:
    op.drop_index("ix_session_events_replies", table_name="session_events")
