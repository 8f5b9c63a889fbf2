"""Prompts sent with a token from another member's invite link: ``entries.token_claims``,
the token's claims, so a prompt that waits is judged by that token when its run starts
(its maker lowered or removed meanwhile: it ends ``token_revoked``), on whichever node or
process runs it then. Rows stored before have none (NULL): judged by their author alone,
as they were.

Revision ID: entries_0032
Revises: tokens_0031
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "entries_0032"
down_revision = "tokens_0031"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("entries") as batch:
        batch.add_column(sa.Column("token_claims", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("entries") as batch:
        batch.drop_column("token_claims")
