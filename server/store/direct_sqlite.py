"""The statements every run writes, run on SQLite's own connection, beneath SQLAlchemy.

A statement built once (``command_statements``) still costs SQLAlchemy's execution path
on each run: a greenlet switch into the sync engine and back for the cursor, for its
execute and for its close, an execution context, parameter processing and a result. On
SQLite, called in the loop's thread (``server.store.sqlite_inline``), that was 53 us a
statement against 25 us for ``sqlite3`` itself, and a run writes about ten
(``bench.run_cost``).

A statement marked here (``direct``) is compiled once per set of parameter names, by
SQLAlchemy, for SQLite, and then run on the transaction's own ``sqlite3`` connection:
same SQL, same transaction, same bound values (SQLAlchemy's bind processors), same errors
(``sqlite3``'s wrapped as SQLAlchemy wraps them). Only what needs none of SQLAlchemy's
work around the statement is marked or taken: no Python-side column defaults, no result
processors on what it returns, no use of what SQLAlchemy reads back after it (inserted
primary keys, server defaults): a caller reads its rows, or how many it changed. Anything
else, and every statement while something listens to the engine's statements (a test
counting them), goes SQLAlchemy's way.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

# Statements marked as run here, by identity (the statement objects live for the process).
_MARKED: dict[int, Any] = {}
# Compiled plans, by (statement, parameter names); None: this one goes SQLAlchemy's way.
_PLANS: dict[tuple[int, tuple[str, ...]], Plan | None] = {}


def direct(statement: Any) -> Any:
    """Mark a statement built once (a module's constant) to run beneath SQLAlchemy on
    SQLite (a select: off the loop, ``Database.read_rows``); returns it."""
    _MARKED[id(statement)] = statement
    return statement


class DirectResult:
    """What a direct statement returned: the few things its callers read of a result."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def first(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def all(self) -> list[tuple[Any, ...]]:
        return list(self._rows)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._rows)


class Plan:
    """A marked statement compiled for SQLite with one set of parameter names."""

    __slots__ = ("defaults", "names", "processors", "returns", "sql")

    def __init__(self, compiled: Any) -> None:
        sql: str = compiled.string
        processors = compiled._bind_processors
        given = compiled.construct_params(_check=False)
        names: list[str] = []
        # Values bound in the statement itself (a literal, an IN list), by name; any other
        # must come with the parameters.
        defaults: dict[str, Any] = {}
        for name in compiled.positiontup:
            bind = compiled.binds.get(name)
            if bind is not None and bind.expanding:
                # An IN list given in the statement: its values, each a parameter of its own.
                items = [f"{name}~{i}" for i in range(len(bind.value))]
                sql = sql.replace(f"__[POSTCOMPILE_{name}]", ", ".join("?" for _ in items))
                defaults.update(zip(items, bind.value, strict=True))
                processors = {**processors, **dict.fromkeys(items, processors.get(name))}
                names.extend(items)
                continue
            if bind is not None and not bind.required:
                defaults[name] = given[name]
            names.append(name)
        self.sql = sql
        self.names: tuple[str, ...] = tuple(names)
        self.processors: tuple[Callable[[Any], Any] | None, ...] = tuple(
            processors.get(name) for name in self.names
        )
        self.defaults = defaults
        self.returns = bool(compiled.returning) or compiled.statement.is_select

    def values(self, parameters: Mapping[str, Any]) -> tuple[Any, ...]:
        defaults = self.defaults
        out = []
        for name, processor in zip(self.names, self.processors, strict=True):
            value = parameters[name] if name in parameters else defaults[name]
            out.append(value if processor is None else processor(value))
        return tuple(out)

    def run(
        self, connection: sqlite3.Connection, parameters: Mapping[str, Any] | Sequence[Any]
    ) -> DirectResult:
        rows: list[tuple[Any, ...]] = []
        count = 0
        try:
            cursor = connection.cursor()
            try:
                if isinstance(parameters, Mapping):
                    cursor.execute(self.sql, self.values(parameters))
                    if self.returns:
                        rows = cursor.fetchall()
                    count = cursor.rowcount
                elif self.returns:  # each row on its own, its returned values in order
                    for one in parameters:
                        cursor.execute(self.sql, self.values(one))
                        rows.extend(cursor.fetchall())
                        count += 1
                else:
                    cursor.executemany(self.sql, [self.values(one) for one in parameters])
                    count = cursor.rowcount
            finally:
                cursor.close()
        except sqlite3.Error as exc:
            raise DBAPIError.instance(
                self.sql, None, exc, sqlite3.Error, ismulti=not isinstance(parameters, Mapping)
            ) from exc
        return DirectResult(rows, count)


def plan_for(statement: Any, parameters: Any, dialect: Dialect) -> Plan | None:
    """The compiled plan of ``statement`` for ``parameters`` (a dict, or a list of dicts
    with the same names), or None when it goes SQLAlchemy's way."""
    marked = id(statement)
    if marked not in _MARKED:
        return None
    first = parameters if isinstance(parameters, Mapping) else (parameters or [None])[0]
    if not isinstance(first, Mapping):
        return None
    key = (marked, tuple(first))
    try:
        return _PLANS[key]
    except KeyError:
        pass
    plan = _compile(statement, list(first), dialect)
    _PLANS[key] = plan
    return plan


def _compile(statement: Any, names: list[str], dialect: Dialect) -> Plan | None:
    compiled = statement.compile(dialect=dialect, column_keys=names)
    if compiled.insert_prefetch or compiled.update_prefetch:
        return None  # Python-side defaults, computed by SQLAlchemy before the statement
    if dialect.paramstyle != "qmark" or compiled.positiontup is None:
        return None
    for name in compiled.positiontup:
        bind = compiled.binds.get(name)
        if bind is not None and bind.expanding and not isinstance(bind.value, list | tuple):
            return None  # an IN list given at execution
    for column in compiled._result_columns:
        if column.type.result_processor(dialect, None) is not None:
            return None
    return Plan(compiled)
