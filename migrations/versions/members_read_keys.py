"""Members: the keys of user ids and display names made again, of names as they are read
now (``parley.session.names.read_name``: letters of other scripts that look like Latin ones
read as those), so a name is found by its key among those that read alike (FX59: a
Cyrillic "a", U+0430, passed for a Latin one). No column changes; down again, the keys
are of names folded alone, as ``members_0027`` made them.

Revision ID: members_0034
Revises: webhooks_0033
Create Date: 2026-12-07
"""

from __future__ import annotations

from parley.migrations.member_keys import folded_key, key_members

revision = "members_0034"
down_revision = "webhooks_0033"
branch_labels = None
depends_on = None


def upgrade() -> None:
    key_members()


def downgrade() -> None:
    key_members(folded_key)
