"""Event webhooks: a head marker on the first unfinished delivery of each subscription
and session, so the sender claims what is due with an index range instead of searching
the backlog for each session's oldest delivery.

Existing unfinished deliveries get their heads here.

Revision ID: webhooks_0014
Revises: webhooks_0013
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "webhooks_0014"
down_revision = "webhooks_0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("head", sa.Boolean, nullable=False, server_default=sa.false()))
    op.execute(
        "UPDATE webhook_deliveries SET head = true WHERE id IN ("
        " SELECT min(id) FROM webhook_deliveries WHERE status IN ('pending', 'sending')"
        " GROUP BY webhook_id, session_id)"
    )
    op.drop_index("ix_webhook_deliveries_due", "webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_order", "webhook_deliveries")
    op.create_index("ix_webhook_deliveries_head", "webhook_deliveries", ["head", "next_at"])
    op.create_index(
        "ix_webhook_deliveries_order",
        "webhook_deliveries",
        ["webhook_id", "session_id", "head", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_order", "webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_head", "webhook_deliveries")
    op.create_index(
        "ix_webhook_deliveries_order", "webhook_deliveries", ["webhook_id", "session_id", "id"]
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_at"])
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_column("head")
