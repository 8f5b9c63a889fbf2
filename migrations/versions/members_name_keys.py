"""Members: the keys of each member's folded user id and display name, indexed by session,
so a name set is compared with the few members whose names may read alike, not with every
member (review R4-3).

Existing rows get their keys here (``parley.session.names.name_key``, as the code at this
revision computes them); a row left without them (NULL) is still compared, folded.

Revision ID: members_0027
Revises: webhooks_0026
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from parley.migrations.member_keys import key_members

revision = "members_0027"
down_revision = "webhooks_0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("members") as batch:
        batch.add_column(sa.Column("user_id_key", sa.String(32)))
        batch.add_column(sa.Column("name_key", sa.String(32)))
    key_members()
    op.create_index("ix_members_user_id_key", "members", ["session_id", "user_id_key"])
    op.create_index("ix_members_name_key", "members", ["session_id", "name_key"])


def downgrade() -> None:
    op.drop_index("ix_members_name_key", table_name="members")
    op.drop_index("ix_members_user_id_key", table_name="members")
    with op.batch_alter_table("members") as batch:
        batch.drop_column("name_key")
        batch.drop_column("user_id_key")
