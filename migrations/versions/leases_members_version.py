"""Cluster: ``session_leases.members_version``, counted up by every change of a session's
members or client tokens, so the node that runs it learns from its write fence that a
change stored on another node is not in force there yet.

Revision ID: leases_0029
Revises: audit_0028
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "leases_0029"
down_revision = "audit_0028"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("session_leases") as batch:
        batch.add_column(
            sa.Column("members_version", sa.BigInteger, nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("session_leases") as batch:
        batch.drop_column("members_version")
