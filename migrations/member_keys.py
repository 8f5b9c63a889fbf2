"""The keys of members' user ids and display names (``session.names.name_key``), written to
the rows there are by the migrations that add them (``members_0027``) or change how they
are made (``members_0034``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

from parley.session.names import fold_name, name_key

_BATCH = 1000


def folded_key(name: str) -> str:
    """A key as ``members_0027`` made it, of ``fold_name`` alone (``members_0034`` down)."""
    folded = fold_name(name)
    return hashlib.blake2b(folded.encode(), digest_size=16).hexdigest() if folded else ""


def key_members(key: Callable[[str], str] = name_key) -> None:
    """Set every member row's ``user_id_key`` and ``name_key`` by ``key`` (by default as
    the code keys them now)."""
    members = sa.table(
        "members",
        sa.column("session_id", sa.String),
        sa.column("user_id", sa.String),
        sa.column("display_name", sa.String),
        sa.column("user_id_key", sa.String),
        sa.column("name_key", sa.String),
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(members.c.session_id, members.c.user_id, members.c.display_name)
    ).all()
    update = (
        sa.update(members)
        .where(members.c.session_id == sa.bindparam("s"), members.c.user_id == sa.bindparam("u"))
        .values(user_id_key=sa.bindparam("uk"), name_key=sa.bindparam("nk"))
    )
    for start in range(0, len(rows), _BATCH):
        batch_rows = rows[start : start + _BATCH]
        bind.execute(
            update,
            [{"s": s, "u": u, "uk": key(u), "nk": key(n)} for s, u, n in batch_rows],
        )
