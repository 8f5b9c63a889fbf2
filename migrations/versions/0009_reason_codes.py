"""A stable code beside the human reason of every prompt that ended unanswered.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

Rows stored before this revision carried the code as a prefix of ``reason``
(``"timeout: …"``, ``"interrupted: the server stopped …"``); they are given the code their
prefix names, so REST answers the same for old and new prompts.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# (reason prefix, code), first match wins.
_PREFIXES = [
    ("cancelled by ", "cancelled"),
    ("interrupted: superseded", "superseded"),
    ("interrupted by a newer prompt", "superseded"),
    ("interrupted: the server shut down", "server_shutdown"),
    ("interrupted: the server stopped", "server_restart"),
    ("timeout:", "timeout"),
    ("forbidden:", "forbidden"),
    ("too_large:", "too_large"),
    ("quota_exceeded:", "quota_exceeded"),
    ("unavailable:", "unavailable"),
    ("provider_error:", "provider_error"),
    ("provider error:", "provider_error"),
]


def upgrade() -> None:
    op.add_column("entries", sa.Column("reason_code", sa.String(32)))
    entries = sa.table(
        "entries", sa.column("reason", sa.String), sa.column("reason_code", sa.String)
    )
    for prefix, code in _PREFIXES:
        op.execute(
            entries.update()
            .where(entries.c.reason.like(prefix + "%"), entries.c.reason_code.is_(None))
            .values(reason_code=code)
        )
    op.execute(
        entries.update()
        .where(entries.c.reason.is_not(None), entries.c.reason_code.is_(None))
        .values(reason_code="internal_error")
    )


def downgrade() -> None:
    with op.batch_alter_table("entries") as batch:
        batch.drop_column("reason_code")
