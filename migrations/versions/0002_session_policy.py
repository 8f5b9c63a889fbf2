"""A scheduling policy per session (queue, coalesce, interrupt, reject).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("policy", sa.String(16), nullable=False, server_default="queue"))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("policy")
