"""Summaries: ``extends``, the summary a row extends (NULL: it starts a chain), so that
what a summary covers is rebuilt along its own chain. A summary made once membership
changed starts a new chain that does not hold the old one's text; rebuilt as the union of
every row before it, it claimed the old chain's turns as well.

Revision ID: summaries_0023
Revises: audit_0022
Create Date: 2026-12-06

Rows stored before this revision are taken to extend the row before them, which is what
they were read as until now (whether one started a chain was not kept). A row an older
server writes after it has none: it is read as starting a chain, which covers less than
its text holds (turns summarised twice), never more (turns lost).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "summaries_0023"
down_revision = "audit_0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("summaries") as batch:
        batch.add_column(sa.Column("extends", sa.String(64)))
    summaries = sa.table(
        "summaries",
        sa.column("id", sa.String),
        sa.column("session_id", sa.String),
        sa.column("ordinal", sa.Integer),
        sa.column("extends", sa.String),
    )
    before = summaries.alias("before")
    op.execute(
        summaries.update().values(
            extends=sa.select(before.c.id)
            .where(
                before.c.session_id == summaries.c.session_id,
                before.c.ordinal == summaries.c.ordinal - 1,
            )
            .scalar_subquery()
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("summaries") as batch:
        batch.drop_column("extends")
