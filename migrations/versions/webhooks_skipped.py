"""Event webhooks: ``webhooks.skipped_from`` and ``webhooks.skipped_to``, the range of
events (ms) not delivered to a subscription because its outbox was full, kept until the
integrator acknowledges it (``full_at`` alone was cleared when the subscription took
events again, and nothing said which events it had skipped). Rows stored before have none.

Not in batch mode: SQLite would copy ``webhooks`` to drop a column, and dropping the old
copy deletes every delivery with it (``ON DELETE CASCADE``, foreign keys on). SQLite drops
a column in place since 3.35.

Revision ID: webhooks_0033
Revises: entries_0032
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "webhooks_0033"
down_revision = "entries_0032"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("webhooks", sa.Column("skipped_from", sa.BigInteger))
    op.add_column("webhooks", sa.Column("skipped_to", sa.BigInteger))


def downgrade() -> None:
    op.drop_column("webhooks", "skipped_to")
    op.drop_column("webhooks", "skipped_from")
