"""Sessions: ``restricted_replies_by``, the member who chose ``restricted_replies: shared``
(NULL: the admin key). A member's choice covers only what they may read: a reply drawing
on a reader list they may not read (one added after they chose it) stays private. Filled
for sessions already ``shared`` from their audit log (the ``policy`` record that last set
it): a member's choice from before is judged from now on too.

Revision ID: sessions_0025
Revises: presence_0024
Create Date: 2026-12-06
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "sessions_0025"
down_revision = "presence_0024"
branch_labels = None
depends_on = None

ADMIN_ACTOR = "admin"  # as ``authz.tokens`` names the admin key in audit records


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("restricted_replies_by", sa.String(200), nullable=True))
    bind = op.get_bind()
    shared = bind.execute(sa.text("SELECT id FROM sessions WHERE restricted_replies = 'shared'"))
    for (session_id,) in shared.fetchall():
        records = bind.execute(
            sa.text(
                "SELECT actor, data FROM audit_log WHERE session_id = :sid AND kind = 'policy'"
                " ORDER BY id DESC"
            ),
            {"sid": session_id},
        )
        for actor, data in records:
            change = json.loads(data).get("restricted_replies")
            if isinstance(change, dict) and change.get("to") == "shared":
                if actor != ADMIN_ACTOR:
                    bind.execute(
                        sa.text("UPDATE sessions SET restricted_replies_by = :by WHERE id = :sid"),
                        {"by": actor, "sid": session_id},
                    )
                break


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("restricted_replies_by")
