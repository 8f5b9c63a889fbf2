"""``ix_documents_heads`` on PostgreSQL: ``(session_id, created_at, id)``, not the title and
reader lists too. A btree entry there holds at most 2,704 bytes, and a document whose
title and readers were within their bounds but longer (1,000 users of 200 characters)
could not be attached: 503 ``unavailable`` (FX77). PostgreSQL stores long values out of
line and reads them only when selected, so a list reads no text by this index either.
SQLite's, which must hold all a list shows (``documents_0020``), is left as it is.

A downgrade makes the old index again: it fails, changing nothing, while a document
attached since has a title and readers longer than the entry's limit (detach it first).

Revision ID: documents_0035
Revises: members_0034
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "documents_0035"
down_revision = "members_0034"
branch_labels = None
depends_on = None

_ORDER = ["session_id", "created_at", "id"]


def _make(columns: list[str]) -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    op.drop_index("ix_documents_heads", table_name="documents")
    op.create_index("ix_documents_heads", "documents", columns)


def upgrade() -> None:
    _make(_ORDER)


def downgrade() -> None:
    _make([*_ORDER, "title", "readers"])
