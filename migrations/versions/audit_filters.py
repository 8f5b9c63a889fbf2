"""The audit log: an index for each filter of a page (``?kind=``, ``?actor=``), in the
order a page is read (``server.store.horizon``): ``(session_id, column, xid, id)`` on
PostgreSQL, ``(session_id, column, id)`` on SQLite, where every ``xid`` is 0 and, held
before the id, would leave every match to be sorted. Without them a filtered page walked
the session's whole log (review FX21: 0.2 s a page at 1,000,000 records). On SQLite, for
the same reason, an unfiltered page's index is ``(session_id, id)`` again
(``ix_audit_log_session_id``, as before ``audit_0022``), not ``(session_id, xid, id)``.

Revision ID: audit_0028
Revises: members_0027
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "audit_0028"
down_revision = "members_0027"
branch_labels = None
depends_on = None

_FILTERS = ("kind", "actor")


def _on_sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    order = ["id"] if _on_sqlite() else ["xid", "id"]
    for column in _FILTERS:
        op.create_index(f"ix_audit_log_{column}", "audit_log", ["session_id", column, *order])
    if _on_sqlite():
        op.drop_index("ix_audit_log_session_xid", table_name="audit_log")
        op.create_index("ix_audit_log_session_id", "audit_log", ["session_id", "id"])


def downgrade() -> None:
    if _on_sqlite():
        op.drop_index("ix_audit_log_session_id", table_name="audit_log")
        op.create_index("ix_audit_log_session_xid", "audit_log", ["session_id", "xid", "id"])
    for column in _FILTERS:
        op.drop_index(f"ix_audit_log_{column}", table_name="audit_log")
