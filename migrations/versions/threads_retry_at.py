"""``side_thread_turns.retry_at``: when a side-thread prompt a quota failed (and its reply)
may be sent again, in milliseconds since the epoch (the next UTC midnight, worked out once
as it failed), as a session prompt's ending stores it in the document and the
``run_failed`` event (FX75). Stored, never recomputed on read, so every path, a read
after a restart and every node of a cluster tell the same figure. Rows stored before have
none (NULL), as every turn that no quota failed.

Revision ID: threads_0037
Revises: commands_0036
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "threads_0037"
down_revision = "commands_0036"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("side_thread_turns") as batch:
        batch.add_column(sa.Column("retry_at", sa.BigInteger))


def downgrade() -> None:
    with op.batch_alter_table("side_thread_turns") as batch:
        batch.drop_column("retry_at")
