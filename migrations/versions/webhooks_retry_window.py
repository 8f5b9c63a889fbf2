"""Event webhooks: a delivery's retry period runs from its first attempt, not from its
event. ``retry_from`` is NULL until then (the claim sets it).

Deliveries waiting unattempted get NULL here, so the time they waited (behind their
session's head, or held by a paused or disabled subscription) spends none of their period.

SQLite changes a column's NOT NULL by copying the table, and dropping the old copy would
delete every attempt with it (``ON DELETE CASCADE``, foreign keys on): the attempts are
kept aside meanwhile.

Revision ID: webhooks_0026
Revises: sessions_0025
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "webhooks_0026"
down_revision = "sessions_0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _retry_from(nullable=True)
    op.execute(
        "UPDATE webhook_deliveries SET retry_from = NULL"
        " WHERE status IN ('pending', 'sending') AND attempts = 0"
    )


def downgrade() -> None:
    op.execute("UPDATE webhook_deliveries SET retry_from = created_at WHERE retry_from IS NULL")
    _retry_from(nullable=False)


def _retry_from(*, nullable: bool) -> None:
    copies = op.get_bind().dialect.name == "sqlite"
    if copies:
        op.execute("CREATE TEMPORARY TABLE kept_attempts AS SELECT * FROM webhook_attempts")
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.alter_column("retry_from", existing_type=sa.BigInteger, nullable=nullable)
    if copies:
        op.execute("DELETE FROM webhook_attempts")  # emptied by the cascade, unless keys were off
        op.execute("INSERT INTO webhook_attempts SELECT * FROM kept_attempts")
        op.execute("DROP TABLE kept_attempts")
