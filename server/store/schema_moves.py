"""A schema move (``parley db upgrade``, ``db downgrade``, ``migrate``) judged before the
database is touched, and undone on the disk when it failed on a database it created.

A revision the migrations do not have was refused by Alembic only after the SQLite file
(and its lock file) had been made: the failed command left an empty database behind. The
target is read against the migration files first; a move back on a SQLite file that is
not there is refused too (nothing to move back). What still fails later (a migration that
raises on a new file) removes the database files the command made, while it holds its
claim. The claim's lock file is kept: removed, a process that opened it a moment before
would hold a lock nobody else can see.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import make_url

from parley.server.store.db import alembic_config
from parley.server.store.sqlite_inline import file_path

# Alembic's own form of a relative target (``-1``, ``head-2``, ``branch@ae10+1``).
RELATIVE = re.compile(r"(?:(?P<branch>.+?)@)?(?P<base>\w+)?(?P<step>[+-]\d+)")
# What SQLite makes beside its file.
SIDE_FILES = ("-wal", "-shm", "-journal")


def check_target(action: str, target: str, url: str) -> None:
    """``CommandError`` unless ``target`` names a revision the migrations have (or one
    relative to such a revision), and, to move back, the SQLite database is there."""
    if not target.strip():
        raise CommandError("no revision given")
    relative = RELATIVE.fullmatch(target)
    named = target if relative is None else relative.group("base")
    if named:
        script = ScriptDirectory.from_config(alembic_config("sqlite://"))
        script.get_revisions(named)  # CommandError: "Can't locate revision …"
    database = sqlite_file(url)
    if action == "downgrade" and database is not None and not database.exists():
        raise CommandError(f"no database at {database}: nothing to move back")


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for any other database, or one in memory."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = file_path(parsed)
    return None if database is None else Path(database)


def files_not_there(url: str) -> list[Path]:
    """The SQLite file of ``url`` and the files beside it that a move would make, if the
    database is not there yet (else nothing: a database that was there is kept)."""
    database = sqlite_file(url)
    if database is None or database.exists():
        return []
    paths = [database, *(database.with_name(database.name + side) for side in SIDE_FILES)]
    return [path for path in paths if not path.exists()]


def remove(paths: list[Path]) -> None:
    """Remove what a failed move made (``files_not_there`` before it)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
