"""Client tokens from another member's invite link: ``client_tokens.made_by`` (whose link
gave the token), and ``invites.made_by``/``invites.maker_epoch`` (a member's link for
themselves minted with such a token carries its maker), so such tokens are revoked once
their member is known another way (review RM-1). Rows stored before have none (NULL).
Both tables are indexed by user too: a user added to a session has their tokens from
links in other sessions revoked.

Revision ID: tokens_0031
Revises: commands_0030
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "tokens_0031"
down_revision = "commands_0030"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("client_tokens") as batch:
        batch.add_column(sa.Column("made_by", sa.String(200)))
    with op.batch_alter_table("invites") as batch:
        batch.add_column(sa.Column("made_by", sa.String(200)))
        batch.add_column(sa.Column("maker_epoch", sa.String(32)))
    op.create_index("ix_client_tokens_user_id", "client_tokens", ["user_id"])
    op.create_index("ix_invites_user_id", "invites", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_invites_user_id", "invites")
    op.drop_index("ix_client_tokens_user_id", "client_tokens")
    with op.batch_alter_table("invites") as batch:
        batch.drop_column("maker_epoch")
        batch.drop_column("made_by")
    with op.batch_alter_table("client_tokens") as batch:
        batch.drop_column("made_by")
