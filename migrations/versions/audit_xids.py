"""The audit log and the webhook outbox: ``xid``, the writing transaction's id on
PostgreSQL (0 on SQLite and for rows written before), so that a reader paging with
``?after=`` reads rows in an order no transaction still in flight can write before
(``server.store.horizon``), and an index for that order.

Revision ID: audit_0022
Revises: webhooks_0021
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "audit_0022"
down_revision = "webhooks_0021"
branch_labels = None
depends_on = None

# The transaction's id as a number (xid8 has no cast to bigint; 64 bits, never wraps).
_XID = "(pg_current_xact_id()::text::bigint)"


def upgrade() -> None:
    for table in ("audit_log", "webhook_deliveries"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("xid", sa.BigInteger, nullable=False, server_default="0"))
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f"ALTER TABLE {table} ALTER COLUMN xid SET DEFAULT {_XID}")
    op.drop_index("ix_audit_log_session_id", "audit_log")
    op.create_index("ix_audit_log_session_xid", "audit_log", ["session_id", "xid", "id"])
    op.create_index("ix_webhook_deliveries_xid", "webhook_deliveries", ["webhook_id", "xid", "id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_xid", "webhook_deliveries")
    op.drop_index("ix_audit_log_session_xid", "audit_log")
    op.create_index("ix_audit_log_session_id", "audit_log", ["session_id", "id"])
    for table in ("audit_log", "webhook_deliveries"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("xid")
