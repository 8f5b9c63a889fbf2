"""Permissions: custom roles, member grants and denials, documents with readers, webhook
tools, server-side restricted items, the audit log, and a session's restricted-reply policy.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _session_fk() -> sa.Column[str]:
    return sa.Column(
        "session_id",
        sa.String(64),
        sa.ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=False,
    )


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(
            sa.Column("restricted_replies", sa.String(16), nullable=False, server_default="private")
        )
    with op.batch_alter_table("members") as batch:
        batch.add_column(sa.Column("grants", sa.Text, nullable=False, server_default="[]"))
        batch.add_column(sa.Column("denials", sa.Text, nullable=False, server_default="[]"))
    op.create_table(
        "roles",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("capabilities", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "documents",
        sa.Column("id", sa.String(64), primary_key=True),
        _session_fk(),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("readers", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_documents_session_id", "documents", ["session_id"])
    op.create_table(
        "tools",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("parameters", sa.Text, nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("capability", sa.String(200), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("timeout_ms", sa.Integer, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "private_items",
        sa.Column("entry_id", sa.String(64), primary_key=True),
        _session_fk(),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("restriction", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_private_items_session_id", "private_items", ["session_id"])
    op.create_table(
        "audit_log",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        _session_fk(),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_index("ix_audit_log_session_id", "audit_log", ["session_id", "id"])


def downgrade() -> None:
    for table in ("audit_log", "private_items", "tools", "documents", "roles"):
        op.drop_table(table)
    with op.batch_alter_table("members") as batch:
        batch.drop_column("denials")
        batch.drop_column("grants")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("restricted_replies")
