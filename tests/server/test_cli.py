"""The command line as a user meets it: help, version, configuration mistakes, the schema.

Each case runs ``python -m parley.server.cli`` as a real process in a scratch directory: a
configuration mistake is one line on stderr and exit status 2, and nothing was touched
(no database file, no data directory, no port held). Further mistakes of a kind a real
process was refused for already go through ``main`` in this process (``in_process``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from parley.server import cli
from parley.server.cli import build_parser
from parley.server.store.db import head_revision
from tests.conftest import REPO_ROOT

GOOD_KEY = "PARLEY_TEST_CLI_KEY"


def parley(
    tmp_path: Path, *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """``parley *args`` with its data and database under ``tmp_path``."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PARLEY_") or k.startswith("PARLEY_TEST")
    }
    base.pop(GOOD_KEY, None)
    base.update(
        {
            "PARLEY_DATA_DIR": str(tmp_path / "data"),
            "PARLEY_DATABASE_URL": f"sqlite:///{tmp_path / 'parley.db'}",
            "PYTHONPATH": str(REPO_ROOT),
            **env,
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "parley.server.cli", *args],
        cwd=cwd or tmp_path,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )


class GotPastTheConfiguration(Exception):
    """``in_process`` stops ``main`` where a real run would start to act."""


def in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``parley *args`` as ``parley`` runs it (the same environment and working folder),
    through ``main`` in this process: for a configuration mistake, refused before anything
    is opened. Spawning an interpreter for each took most of such a test's time; each
    command's refusal keeps a real process in another test. A configuration taken, ``main``
    is stopped where it would listen or log (return code -1): a mistake let through fails
    the test and starts nothing."""

    def past(*_: object, **__: object) -> None:
        raise GotPastTheConfiguration

    with pytest.MonkeyPatch.context() as patch:
        for name in [k for k in os.environ if k.startswith("PARLEY_")]:
            if not name.startswith("PARLEY_TEST"):
                patch.delenv(name)
        patch.delenv(GOOD_KEY, raising=False)
        for name, value in {
            "PARLEY_DATA_DIR": str(tmp_path / "data"),
            "PARLEY_DATABASE_URL": f"sqlite:///{tmp_path / 'parley.db'}",
            **env,
        }.items():
            patch.setenv(name, value)
        patch.chdir(tmp_path)
        patch.setattr(cli, "listen_socket", past)
        patch.setattr(cli, "configure_logging", past)
        capsys.readouterr()
        try:
            code = cli.main(list(args))
        except GotPastTheConfiguration:
            code = -1
        except SystemExit as exit_:  # argparse's
            code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["parley", *args], code, out, err)


def untouched(tmp_path: Path) -> bool:
    return not (tmp_path / "parley.db").exists() and not (tmp_path / "data").exists()


def said(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines of stderr that are not info log records (Alembic's, say)."""
    return [
        line
        for line in result.stderr.strip().splitlines()
        if not line.startswith('{"ts":') or '"level":"info"' not in line
    ]


def refused(result: subprocess.CompletedProcess[str], starts: str) -> None:
    """Exit status 2 and exactly one line on stderr, beginning with ``starts``."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"parley: configuration error: {starts}"), lines[0]


def test_version_comes_from_the_distribution(tmp_path: Path) -> None:
    result = parley(tmp_path, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"parley {metadata.version('parley')}"


def test_every_command_and_flag_has_plain_help() -> None:
    def walk(parser: argparse.ArgumentParser) -> list[argparse.Action]:
        found: list[argparse.Action] = []
        for action in parser._actions:
            found.append(action)
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{parser.prog} {choice.dest}: no help"
                for sub in action.choices.values():
                    found += walk(sub)
        return found

    parser = build_parser()
    actions = walk(parser)
    assert {a.dest for a in actions} >= {"host", "port", "database_url", "log_level", "revision"}
    for action in actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help, f"{action.option_strings or action.dest}: no help"
    text = " ".join(parser.format_help().split())
    assert "``" not in text and "uvicorn parley.server.app:create_app --factory" in text


def test_models_that_are_not_json_are_one_line(tmp_path: Path) -> None:
    result = parley(tmp_path, "serve", "--port", "1", PARLEY_MODELS="[{bad")
    refused(result, "PARLEY_MODELS: not valid JSON")
    assert untouched(tmp_path)


def test_a_wrong_model_field_names_where_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = json.dumps([{"name": "x", "kind": "nope"}])
    refused(in_process(tmp_path, capsys, "serve", PARLEY_MODELS=models), "PARLEY_MODELS[0].kind:")
    refused(in_process(tmp_path, capsys, "serve", PARLEY_PORT="eighty"), "PARLEY_PORT:")
    assert untouched(tmp_path)


def test_an_unset_api_key_is_refused_before_migrations(tmp_path: Path) -> None:
    models = json.dumps(
        [
            {
                "name": "gpt",
                "kind": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "model": "m",
                "api_key_env": GOOD_KEY,
            }
        ]
    )
    result = parley(tmp_path, "serve", PARLEY_MODELS=models)
    refused(result, f"model 'gpt': the environment variable {GOOD_KEY} is not set")
    assert untouched(tmp_path)


def test_a_busy_port_is_refused_before_anything_is_touched(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = parley(tmp_path, "serve", "--port", str(port))
    refused(result, f"cannot listen on 127.0.0.1:{port}")
    assert untouched(tmp_path)


def test_settings_are_read_from_a_dotenv_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".env").write_text("PARLEY_MODELS=[{bad\n")
    refused(in_process(tmp_path, capsys, "serve"), "PARLEY_MODELS: not valid JSON")
    elsewhere = tmp_path / "conf"
    elsewhere.mkdir()
    (elsewhere / "parley.env").write_text("PARLEY_PORT=eighty\n")
    refused(
        in_process(tmp_path, capsys, "serve", "--env-file", str(elsewhere / "parley.env")),
        "PARLEY_PORT:",
    )
    refused(
        in_process(tmp_path, capsys, "serve", "--env-file", str(tmp_path / "none.env")),
        "--env-file",
    )
    assert untouched(tmp_path)


def test_db_commands_move_the_schema_both_ways(tmp_path: Path) -> None:
    head = head_revision()
    assert head is not None
    assert parley(tmp_path, "db", "upgrade").returncode == 0
    current = parley(tmp_path, "db", "current")
    assert current.returncode == 0 and head in current.stdout
    history = parley(tmp_path, "db", "history")
    assert history.returncode == 0 and head in history.stdout
    previous = history.stdout.splitlines()[0].split(" -> ")[0].strip()
    assert parley(tmp_path, "db", "downgrade", "-1").returncode == 0
    after = parley(tmp_path, "db", "current").stdout
    assert head not in after and previous in after
    assert parley(tmp_path, "migrate").returncode == 0
    assert head in parley(tmp_path, "db", "current").stdout


def test_db_current_on_no_database_says_so_and_makes_none(tmp_path: Path) -> None:
    """Review: ``parley db current`` on a SQLite file that is not there made one (an empty
    database) and said nothing; it says there is none (exit 1) and writes nothing. ``db
    history`` reads the migrations alone and makes none either."""
    result = parley(tmp_path, "db", "current")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    database = tmp_path / "parley.db"
    said = f"parley: cannot open the database sqlite:///{database}: there is no database file"
    assert last == f"{said} (run 'parley migrate' to make one)", last
    history = parley(tmp_path, "db", "history")
    assert history.returncode == 0 and head_revision() in history.stdout, history.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["db"], ["db", "downgrade"], ["serve", "--log-level", "loud"]])
def test_usage_mistakes_exit_2(tmp_path: Path, args: list[str]) -> None:
    result = parley(tmp_path, *args)
    assert result.returncode == 2 and "usage: parley" in result.stderr
    assert untouched(tmp_path)


def test_the_search_bound_in_characters_is_refused_by_its_new_name(tmp_path: Path) -> None:
    """Review B2-1/B2-3: the bound now counts bytes of index; the old setting, silently
    ignored, would leave an operator's bound at a default they never chose."""
    for command in (["db", "upgrade"], ["serve"]):
        result = parley(tmp_path, *command, PARLEY_MAX_SEARCH_INDEX_CHARS="50000000")
        refused(
            result, "PARLEY_MAX_SEARCH_INDEX_CHARS was replaced by PARLEY_MAX_SEARCH_INDEX_BYTES"
        )
        assert untouched(tmp_path)


def test_a_port_past_65535_or_a_database_url_of_no_known_dialect_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Review RL-4: ``--port 99999`` (bind's ``OverflowError``) and a database URL of a
    dialect SQLAlchemy does not know, or no URL at all, were Python tracebacks."""
    refused(in_process(tmp_path, capsys, "serve", "--port", "99999"), "PARLEY_PORT:")
    refused(in_process(tmp_path, capsys, "serve", PARLEY_PORT="65536"), "PARLEY_PORT:")
    for url in ("nosuch://x", "not a url", "postgresql+nosuchdriver://u@h/db"):
        for command in (["serve", "--port", "0"], ["migrate"], ["db", "current"]):
            refused(
                in_process(tmp_path, capsys, *command, "--database-url", url),
                "PARLEY_DATABASE_URL:",
            )
    assert untouched(tmp_path)


def test_a_database_that_cannot_be_opened_or_an_unknown_revision_is_one_line(
    tmp_path: Path,
) -> None:
    """Review RL-4: ``migrate`` on a SQLite file in a folder that is not there, and
    ``db upgrade`` to a revision there is not, were Python tracebacks (``serve`` gave one
    log line): one line, exit 1 for a database that cannot be opened, 2 for a revision
    the migrations do not have (a mistake in the command)."""
    missing = f"sqlite+aiosqlite:///{tmp_path / 'none' / 'x.db'}"
    for command in (["migrate"], ["db", "upgrade"], ["db", "current"]):
        result = parley(tmp_path, *command, "--database-url", missing)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("parley: cannot open the database ") and "x.db" in last, last
    for command in (["db", "upgrade", "nosuchrev"], ["db", "downgrade", "nosuchrev"]):
        result = parley(tmp_path, *command)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"parley: {command[1]}: ") and "nosuchrev" in last, last


def test_the_help_says_where_the_database_and_the_keys_live() -> None:
    """Review RL-1: ``--data-dir`` said the SQLite file lived there, and ``--database-url``
    that its default was in the data directory: it is ``./parley.db``, whatever the data
    directory (which holds the generated keys)."""
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    helps = {a.dest: " ".join((a.help or "").split()) for a in serve._actions}
    assert "SQLite" not in helps["data_dir"] and "keys" in helps["data_dir"]
    assert "./parley.db" in helps["database_url"], helps["database_url"]
    assert "data directory" not in helps["database_url"]


@pytest.mark.parametrize(
    "args",
    [["db", "upgrade", "nosuchrev"], ["db", "downgrade", "nosuchrev"], ["db", "downgrade", "-1"]],
)
def test_a_refused_schema_move_leaves_no_database_behind(tmp_path: Path, args: list[str]) -> None:
    """A revision the migrations do not have was refused after the SQLite file (and its
    lock file) had been made: the failed command left an empty database behind. It is
    refused first (a revision the migrations have, a database that is there to move
    back), in one line, exit 2, and nothing is written."""
    result = parley(tmp_path, *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"parley: {args[1]}: "), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())


def test_serve_on_a_database_folder_that_is_not_there_writes_no_key(tmp_path: Path) -> None:
    """``serve`` wrote the generated admin and signing keys before it found the database
    could not be opened, then exited 1: a failed start leaves nothing written."""
    missing = f"sqlite+aiosqlite:///{tmp_path / 'none' / 'x.db'}"
    result = parley(tmp_path, "serve", "--port", "0", "--database-url", missing)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "x.db" in result.stderr, result.stderr
    assert untouched(tmp_path) and not (tmp_path / "none").exists()


def test_a_move_that_fails_on_a_database_it_made_removes_it(tmp_path: Path) -> None:
    """A target Alembic refuses only once the database is open (more steps up than there
    are migrations) left the new SQLite file behind, its schema half made: the failed
    move removes the database it created (the claim's lock file, empty, is kept)."""
    result = parley(tmp_path, "db", "upgrade", "+99")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("parley: upgrade: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parley.db.lock"]


def test_a_data_directory_that_cannot_hold_the_keys_is_refused_first(tmp_path: Path) -> None:
    """The keys were generated after the database was migrated; a data directory under a
    file was a traceback then, the database made. It is judged with the settings."""
    (tmp_path / "afile").write_text("")
    result = parley(tmp_path, "serve", "--port", "0", PARLEY_DATA_DIR=str(tmp_path / "afile" / "d"))
    refused(result, "PARLEY_DATA_DIR: cannot keep the generated keys in ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize(
    ("command", "spec"),
    [
        ("upgrade", "head+1"),
        ("upgrade", "heads+1"),
        ("upgrade", "base+99"),
        ("upgrade", "@"),
        ("upgrade", "head:base"),
        ("upgrade", f"{head_revision()}@base"),
    ],
)
def test_a_target_past_head_before_base_or_not_a_revision_is_one_line_first(
    tmp_path: Path, command: str, spec: str
) -> None:
    """Review RY-5: ``db upgrade head+1`` (any ``REV+N`` past head, ``base+99``) and ``@``
    ended in Alembic's ``AssertionError`` traceback, exit 1. A target is read against the
    migration files before the database is opened: one line, exit 2, nothing written."""
    result = parley(tmp_path, "db", command, spec)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = said(result)
    assert len(lines) == 1 and lines[0].startswith(f"parley: {command}: "), result.stderr
    assert spec in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())


def test_a_move_that_would_go_nowhere_says_so_and_leaves_the_database_as_it_was(
    tmp_path: Path,
) -> None:
    """Review RY-5: on a migrated database ``db downgrade @`` was a traceback, and
    ``downgrade base-1`` (or ``heads``) printed "downgraded to base-1", exit 0, moving
    nothing; ``upgrade base`` said "migrations applied" and stayed where it was. A target
    outside the migrations, or behind (ahead of) the database for an upgrade (a
    downgrade), is one line, exit 2, the file untouched; a move to where the database is
    says that nothing moved; a move says from where to where."""
    head = head_revision()
    assert head is not None and parley(tmp_path, "migrate").returncode == 0
    database = tmp_path / "parley.db"
    before = database.read_bytes()
    for command, spec, says in [
        ("downgrade", "@", "@"),
        ("downgrade", "base-1", "no revision base-1"),
        ("downgrade", f"{head}@base", "@base"),
        ("downgrade", "+1", f"no revision +1 from {head}"),
        ("upgrade", "base", "db downgrade"),
        ("upgrade", "head+1", "no revision head+1"),
    ]:
        result = parley(tmp_path, "db", command, spec)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        # The refusal alone: not after Alembic's lines of reading the database's revision
        # (review FX36: "Context impl SQLiteImpl.", "Will assume non-transactional DDL.").
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"parley: {command}: "), result.stderr
        assert says in lines[0], lines[0]
        assert database.read_bytes() == before, spec
    for command, spec in [("downgrade", "heads"), ("upgrade", "head"), ("upgrade", "+0")]:
        result = parley(tmp_path, "db", command, spec)
        assert result.returncode == 0, result.stderr
        assert result.stderr == f"already at {head} (head): nothing to move\n", result.stderr
    assert database.read_bytes() == before
    previous = parley(tmp_path, "db", "history").stdout.splitlines()[0].split(" -> ")[0].strip()
    result = parley(tmp_path, "db", "downgrade", "heads-1")
    assert result.returncode == 0, result.stderr
    assert f"downgraded from {head} (head) to {previous}" in result.stderr, result.stderr
    result = parley(tmp_path, "migrate")
    assert f"upgraded from {previous} to {head} (head)" in result.stderr, result.stderr


def test_serve_without_migrations_on_a_schema_behind_writes_nothing(tmp_path: Path) -> None:
    """Review RY-6: ``serve --no-migrate`` on a database not at head generated the keys
    (and made an empty SQLite file) before the app found the schema behind, the reason in
    a traceback logged by uvicorn, exit 3. The schema is judged with the database, before
    the keys: one line, exit 2, no key, no database file made, none changed."""
    head = head_revision()
    result = parley(tmp_path, "serve", "--no-migrate", "--port", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = said(result)
    assert lines == [
        f"parley: the database schema is at base (no database at {tmp_path / 'parley.db'}), "
        f"expected {head}: run 'parley migrate'"
    ], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())

    assert parley(tmp_path, "db", "upgrade", "head-1").returncode == 0
    before = (tmp_path / "parley.db").read_bytes()
    behind = parley(tmp_path, "db", "current").stdout.split()[0]
    result = parley(tmp_path, "serve", "--no-migrate", "--port", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = said(result)
    assert lines == [
        f"parley: the database schema is at {behind}, expected {head}: run 'parley migrate'"
    ], result.stderr
    assert not (tmp_path / "data").exists()
    assert (tmp_path / "parley.db").read_bytes() == before


def test_a_misspelled_setting_is_refused_with_the_name_it_is_near(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review RY-9: ``PARLEY_MAX_PROMT_CHARS=10`` (in the environment or ``.env``) was
    ignored without a word, so the limit the operator meant was not in force. A
    ``PARLEY_`` name that is no setting (nor one the project's tests and tools read) is a
    configuration mistake: one line naming it and the setting nearest, exit 2."""
    said = "PARLEY_MAX_PROMT_CHARS: not a setting (did you mean PARLEY_MAX_PROMPT_CHARS?)"
    for command in (["serve"], ["migrate"], ["db", "current"]):
        refused(parley(tmp_path, *command, PARLEY_MAX_PROMT_CHARS="10"), said)
    (tmp_path / ".env").write_text("OTHER_TOOL=1\nPARLEY_MAX_PROMT_CHARS=10\n")
    refused(in_process(tmp_path, capsys, "serve"), said.replace(":", " (in .env):", 1))
    (tmp_path / ".env").write_text("PARLEY_TOTALLY_UNRELATED=1\n")
    refused(
        in_process(tmp_path, capsys, "serve"), "PARLEY_TOTALLY_UNRELATED (in .env): not a setting"
    )
    (tmp_path / ".env").unlink()
    assert untouched(tmp_path)


def test_a_window_too_small_for_a_prompt_beside_a_summary_is_refused_at_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review RV39-F1b: a window where the instructions, the largest summary and a short
    prompt do not fit failed every prompt ``too_large``, whatever members did. It is
    refused where it is set, one line naming the setting, exit 2, nothing written."""
    small = {"PARLEY_CONTEXT_WINDOW_TOKENS": "1500", "PARLEY_MAX_OUTPUT_TOKENS": "1024"}
    refused(
        in_process(tmp_path, capsys, "serve", **small),
        "PARLEY_CONTEXT_WINDOW_TOKENS: a window of 1500 tokens less 1024 reserved for the "
        "output leaves 476;",
    )
    model = {
        "name": "tiny",
        "kind": "offline",
        "context_window_tokens": 700,
        "reserved_output_tokens": 400,
    }
    refused(
        in_process(tmp_path, capsys, "serve", PARLEY_MODELS=json.dumps([model])),
        "PARLEY_MODELS: model 'tiny': a window of 700 tokens",
    )
    assert untouched(tmp_path)
