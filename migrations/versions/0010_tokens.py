"""Token lifecycle: a membership epoch per member, and the client tokens issued.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing members keep epoch "", which tokens issued before this revision carry too.
    with op.batch_alter_table("members") as batch:
        batch.add_column(sa.Column("token_epoch", sa.String(32), nullable=False, server_default=""))
    op.create_table(
        "client_tokens",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "session_id",
            sa.String(64),
            sa.ForeignKey("sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("revoked_at", sa.BigInteger),
    )
    op.create_index("ix_client_tokens_session_id", "client_tokens", ["session_id", "revoked_at"])


def downgrade() -> None:
    op.drop_index("ix_client_tokens_session_id", "client_tokens")
    op.drop_table("client_tokens")
    with op.batch_alter_table("members") as batch:
        batch.drop_column("token_epoch")
