"""Event webhooks: ``webhooks.full_at``, when a subscription's outbox reached its cap
(``PARLEY_WEBHOOK_MAX_WAITING``) and its new deliveries began to be dropped, and an index
of each subscription's unfinished deliveries, which the cap counts.

Revision ID: webhooks_0021
Revises: documents_0020
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "webhooks_0021"
down_revision = "documents_0020"
branch_labels = None
depends_on = None

_WAITING = sa.text("status IN ('pending', 'sending')")


def upgrade() -> None:
    with op.batch_alter_table("webhooks") as batch:
        batch.add_column(sa.Column("full_at", sa.BigInteger))
    op.create_index(
        "ix_webhook_deliveries_waiting",
        "webhook_deliveries",
        ["webhook_id", "id"],
        postgresql_where=_WAITING,
        sqlite_where=_WAITING,
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_waiting", "webhook_deliveries")
    with op.batch_alter_table("webhooks") as batch:
        batch.drop_column("full_at")
