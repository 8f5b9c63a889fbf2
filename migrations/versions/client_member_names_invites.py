"""The browser client: members' display names (and an index to find a user's sessions),
and invite links.

Revision ID: client_0015
Revises: webhooks_0014
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "client_0015"
down_revision = "webhooks_0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("members") as batch:
        batch.add_column(
            sa.Column("display_name", sa.String(80), nullable=False, server_default="")
        )
    op.create_index("ix_members_user_id", "members", ["user_id"])
    op.create_table(
        "invites",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "session_id",
            sa.String(64),
            sa.ForeignKey("sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("token_epoch", sa.String(32), nullable=False),
        sa.Column("max_uses", sa.Integer, nullable=False),
        sa.Column("uses", sa.Integer, nullable=False, server_default="0"),
        sa.Column("token_ttl_s", sa.Integer, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("revoked_at", sa.BigInteger),
    )
    op.create_index("ix_invites_session_id", "invites", ["session_id"])


def downgrade() -> None:
    op.drop_index("ix_invites_session_id", table_name="invites")
    op.drop_table("invites")
    op.drop_index("ix_members_user_id", table_name="members")
    with op.batch_alter_table("members") as batch:
        batch.drop_column("display_name")
