"""Event webhooks: ``webhook_version``, the counter that tells every node to read the
subscriptions again (they are kept in memory between changes).

Revision ID: webhooks_0013
Revises: webhooks_0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "webhooks_0013"
down_revision = "webhooks_0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "webhook_version",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.bulk_insert(table, [{"id": 1, "version": 0}])


def downgrade() -> None:
    op.drop_table("webhook_version")
