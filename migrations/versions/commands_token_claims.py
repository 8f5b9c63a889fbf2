"""Forwarded commands: ``session_commands.token_claims``, the claims of the client token a
member's command was sent with, so the node that runs the session judges a command
forwarded from another node by its token at its commit (revoked, or from the invite link
of a maker who may no longer make it), as it judges its own sockets' commands. Rows stored
before have none (NULL): judged by their member alone, as they were.

Revision ID: commands_0030
Revises: leases_0029
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "commands_0030"
down_revision = "leases_0029"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("session_commands") as batch:
        batch.add_column(sa.Column("token_claims", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("session_commands") as batch:
        batch.drop_column("token_claims")
