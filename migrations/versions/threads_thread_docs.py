"""Side-threads' documents: each thread's CRDT update log (``thread_doc_updates``) and its
snapshot (``thread_doc_snapshots``), so a thread's document survives a restart and is read
by the nodes that follow its session.

A thread stored before this revision has no log: its document is built from its rows the
first time a socket opens it (a client holding a copy from before is closed 4410 once).

Revision ID: threads_0017
Revises: threads_0016
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "threads_0017"
down_revision = "threads_0016"
branch_labels = None
depends_on = None


def _session_id() -> sa.Column[str]:
    return sa.Column(
        "session_id",
        sa.String(64),
        sa.ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=False,
    )


def _thread_id(primary_key: bool) -> sa.Column[str]:
    return sa.Column(
        "thread_id",
        sa.String(64),
        sa.ForeignKey("side_threads.id", ondelete="CASCADE"),
        nullable=False,
        primary_key=primary_key,
    )


def upgrade() -> None:
    op.create_table(
        "thread_doc_updates",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        _session_id(),
        _thread_id(False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_thread_doc_updates_thread_id", "thread_doc_updates", ["thread_id", "id"])
    op.create_table(
        "thread_doc_snapshots",
        _thread_id(True),
        _session_id(),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("last_update_id", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("thread_doc_snapshots")
    op.drop_index("ix_thread_doc_updates_thread_id", table_name="thread_doc_updates")
    op.drop_table("thread_doc_updates")
