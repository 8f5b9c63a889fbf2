"""An index of what a list of a session's documents shows (``ix_documents_heads``): SQLite
reads the columns stored after a long text only by walking all of its pages, so listing
40 titles read 32 MB of texts; from this index it reads none.

Revision ID: documents_0020
Revises: commands_0019
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "documents_0020"
down_revision = "commands_0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_documents_heads",
        "documents",
        ["session_id", "created_at", "id", "title", "readers"],
    )


def downgrade() -> None:
    op.drop_index("ix_documents_heads", table_name="documents")
