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
from dataclasses import dataclass
from pathlib import Path

from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import make_url

from parley.server.store.db import alembic_config
from parley.server.store.sqlite_inline import file_path

# A target: ``head`` (``heads``), ``base`` or a revision (or the start of its id), each
# with steps (``head-2``, ``base+1``), or steps alone, from where the database is (``-1``).
# Alembic's other forms (``branch@rev``, ``a:b``) are refused: these migrations are one line,
# and Alembic read some of them as a move elsewhere (``rev@base``: all the way down) or
# failed on them with an assertion (``@``, ``head+1``: review RY-5).
TARGET = re.compile(r"(?P<name>\w+)?(?P<step>[+-]\d+)?")
FORMS = "head, base, a revision, each with +N or -N steps, or +N/-N from where the database is"
# What SQLite makes beside its file.
SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class Target:
    """A move's target as given (``spec``), its place in the chain of migrations (0: base)
    when that does not depend on the database, else ``steps`` from where the database is."""

    spec: str
    chain: tuple[str | None, ...]  # base (None), then each revision, the head last
    place: int | None
    steps: int

    def resolve(self, action: str, current: str | None) -> tuple[int, int]:
        """Where the database is and where the move goes, as places in the chain;
        ``CommandError`` for a move outside the chain, or in the other direction."""
        if current not in self.chain:
            raise CommandError(
                f"the database is at {current}, a revision these migrations do not have"
            )
        here = self.chain.index(current)
        there = self.place if self.place is not None else here + self.steps
        if self.place is None and not 0 <= there < len(self.chain):
            raise CommandError(f"no revision {self.spec} from {current}: {ends(self.chain)}")
        if action == "upgrade" and there < here:
            raise CommandError(
                f"{self.as_given(there)} is behind the database's "
                f"{self.name(here)}: 'parley db downgrade' moves back"
            )
        if action == "downgrade" and there > here:
            raise CommandError(
                f"{self.as_given(there)} is ahead of the database's "
                f"{self.name(here)}: 'parley db upgrade' moves forward"
            )
        return here, there

    def as_given(self, place: int) -> str:
        """The target as given, with the revision it is when it does not say it."""
        name = self.chain[place] or "base"
        return self.spec if name == self.spec else f"{self.spec} ({name})"

    def name(self, place: int) -> str:
        """A place as the CLI says it: ``base``, ``rev`` or ``rev (head)``."""
        revision = self.chain[place]
        if revision is None:
            return "base"
        return f"{revision} (head)" if place == len(self.chain) - 1 else revision


def check_target(action: str, target: str, url: str) -> Target:
    """The target ``target`` names, read against the migration files; ``CommandError``
    unless it is one of ``FORMS`` within them, or, to move back, the SQLite database is
    not there."""
    form = TARGET.fullmatch(target)
    if not target.strip() or form is None or form.group(0) == "":
        raise CommandError(f"not a revision: {target!r} (give {FORMS})")
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    chain = linear_chain(script)
    name, step = form.group("name"), int(form.group("step") or 0)
    place = None
    if name is not None:
        found = script.get_revision(name)  # CommandError: "Can't locate revision …"
        place = chain.index(None if found is None else found.revision) + step
        if not 0 <= place < len(chain):
            raise CommandError(f"no revision {target}: {ends(chain)}")
    database = sqlite_file(url)
    if action == "downgrade" and database is not None and not database.exists():
        raise CommandError(f"no database at {database}: nothing to move back")
    return Target(target, chain, place, step)


def linear_chain(script: ScriptDirectory) -> tuple[str | None, ...]:
    """Base (None), then every revision in order; ``CommandError`` if they branch."""
    revisions = list(script.walk_revisions())
    heads = script.get_heads()
    if len(heads) != 1 or any(not isinstance(r.down_revision, str | None) for r in revisions):
        raise CommandError("the migrations branch: move them with Alembic itself")
    return (None, *(r.revision for r in reversed(revisions)))


def ends(chain: tuple[str | None, ...]) -> str:
    return f"base is the first, {chain[-1]} (head) the newest"


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
