"""``ix_session_commands_open``: ``(session_id, id)`` over the commands not answered yet
(``result`` NULL or empty), not ``(session_id, result, id)``. A forwarded REST write's
answer (all the session's facts, up to 100 of 2,000 characters) is stored in ``result``,
and on PostgreSQL a btree entry holds at most 2,704 bytes: past it the answer could not be
stored, the command stayed taken and was never answered, and the running node tried again
every round (FX77). A take reads only the unanswered, in id order: the partial index is
all it needs, and answered rows are not in it at all.

A downgrade makes the old index again: it fails, changing nothing, while an answered
command's result is longer than the entry's limit (they are pruned after 10 minutes).

Revision ID: commands_0036
Revises: documents_0035
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "commands_0036"
down_revision = "documents_0035"
branch_labels = None
depends_on = None

_NAME = "ix_session_commands_open"
_UNANSWERED = sa.text("result IS NULL OR result = ''")


def upgrade() -> None:
    op.drop_index(_NAME, table_name="session_commands")
    op.create_index(
        _NAME,
        "session_commands",
        ["session_id", "id"],
        postgresql_where=_UNANSWERED,
        sqlite_where=_UNANSWERED,
    )


def downgrade() -> None:
    op.drop_index(_NAME, table_name="session_commands")
    op.create_index(_NAME, "session_commands", ["session_id", "result", "id"])
