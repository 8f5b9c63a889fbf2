"""The layers, read from the source: imports point one way, the core does no I/O, and the
WebSocket close codes come from one table.

    server  ->  session.core  ->  authz  ->  session
       └──────────────┴───────────────────────┘

``session/`` (but its ``core/``) imports neither ``authz/`` nor ``server/``; ``authz/``
imports ``session/`` only; the session core (``session/core/``, which judges commands with
``authz``) sits above both; ``server/`` (the I/O shell) may import all three. None of
``session/`` and ``authz/`` imports an I/O library.
"""

from __future__ import annotations

import ast
import subprocess
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Package: the project packages it may import (besides itself).
MAY_IMPORT = {
    "session": frozenset(),
    "authz": frozenset({"session"}),
    "session.core": frozenset({"session", "authz"}),
    "server": frozenset({"session", "session.core", "authz", "migrations"}),
}
PROJECT = frozenset(MAY_IMPORT) | {"migrations", "bench", "tests"}
CORE = "session.core"
IO_LIBRARIES = frozenset(
    {
        "asyncio",
        "anyio",
        "socket",
        "sqlite3",
        "sqlalchemy",
        "alembic",
        "asyncpg",
        "aiosqlite",
        "httpx",
        "httpx_sse",
        "starlette",
        "uvicorn",
        "websockets",
    }
)
PURE = ("session", "authz", CORE)


def _modules(package: str) -> Iterator[tuple[Path, ast.Module]]:
    core = ROOT / "session" / "core"
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        if package == "session" and path.is_relative_to(core):
            continue  # a layer of its own
        yield path.relative_to(ROOT), ast.parse(path.read_text(), str(path))


def _layer(module: str) -> str:
    return CORE if module == CORE or module.startswith(CORE + ".") else module.split(".")[0]


def _project_name(module: str) -> str:
    """``parley.session.core.x`` as ``session.core.x``: the layers are the packages under
    the one import package ``parley``."""
    return module.removeprefix("parley.")


def _absolute_imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Every module an absolute import names (``from a import b``: ``a.b`` too, since ``b``
    may be a module), ``TYPE_CHECKING`` ones included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in {"parley", "parley.session"}:  # ``from parley import server``
                for alias in node.names:
                    yield node.lineno, f"{node.module}.{alias.name}"
            else:
                yield node.lineno, node.module


def _imported(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """The layer of every absolute import."""
    for line, module in _absolute_imports(tree):
        yield line, _layer(_project_name(module))


def import_violations(package: str) -> list[str]:
    found = []
    for path, tree in _modules(package):
        for line, name in _imported(tree):
            if name in PROJECT and name != package and name not in MAY_IMPORT[package]:
                found.append(f"{path}:{line} imports {name}")
            if package in PURE and name in IO_LIBRARIES:
                found.append(f"{path}:{line} imports {name} (I/O in the pure core)")
    return found


def _is_close_number(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Constant)
        and type(node.value) is int
        and (1000 <= node.value <= 1015 or 3000 <= node.value <= 4999)
    )


def close_code_violations(package: str) -> list[str]:
    """Close codes written as numbers: one assigned to a ``CLOSE_*`` constant (or any
    ``*close*`` name or attribute), passed to a ``close``/``unload`` call, or given as the
    default of a ``*close*`` parameter."""
    found = []
    for path, tree in _modules(package):
        for node in ast.walk(tree):
            where = f"{path}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [ast.unparse(t) for t in targets]
                value = node.value
                if (
                    value is not None
                    and _is_close_number(value)
                    and any("close" in n.lower() for n in names)
                ):
                    found.append(f"{where} defines close code {names[0]}")
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in {"close", "unload"}:
                    given = [*node.args, *(k.value for k in node.keywords)]
                    if any(_is_close_number(n) for arg in given for n in ast.walk(arg)):
                        found.append(f"{where} closes with a bare number")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                given = node.args.args[len(node.args.args) - len(node.args.defaults) :]
                pairs = [
                    *zip(given, node.args.defaults, strict=True),
                    *zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True),
                ]
                for arg, default in pairs:
                    if "close" in arg.arg and default is not None and _is_close_number(default):
                        found.append(f"{where} defaults {arg.arg} to a bare number")
    return found


def test_imports_point_one_way_and_the_core_does_no_io() -> None:
    assert [v for package in MAY_IMPORT for v in import_violations(package)] == []


def test_no_module_of_the_server_has_close_codes_of_its_own() -> None:
    assert close_code_violations("server") == []


def test_the_python_sdk_imports_nothing_of_the_server() -> None:
    """``clients/python`` is a distribution of its own: it may not lean on the server's
    packages (it carries its own copy of the few encoders it needs)."""
    sdk = sorted((ROOT / "clients" / "python" / "parley_client").rglob("*.py"))
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sdk
        for line, name in _imported(ast.parse(path.read_text(), str(path)))
        if name.split(".")[0] in PROJECT
    ]
    assert sdk and found == []
    assert not [
        f"{path}:{line}"
        for path in sdk
        for line, module in _absolute_imports(ast.parse(path.read_text(), str(path)))
        if module == "parley" or module.startswith("parley.")
    ]


def _tracked_python(folders: tuple[str, ...]) -> list[Path]:
    """The project's own Python files in ``folders``: what git tracks plus what is new,
    never what an install put there (``node_modules``, the bench peers' virtualenv)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *folders],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / name for name in listed if name.endswith(".py") and (ROOT / name).exists()]


def test_the_project_is_imported_through_the_one_package() -> None:
    """Code and tests import ``parley.server``, never ``server``: a module imported by both
    names would be two modules (two registries, two exception classes)."""
    bare = frozenset({"server", "session", "authz", "migrations"})
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _tracked_python(("server", "session", "authz", "migrations", "tests", "bench"))
        for line, module in _absolute_imports(ast.parse(path.read_text(), str(path)))
        if module.split(".")[0] in bare
    ]
    assert found == []


def document_observers(tree: ast.AST) -> list[tuple[int, str]]:
    """Observers registered on a pycrdt document in ``tree`` (line, call):
    ``observe_deep``/``observe_subdocs`` anywhere, and ``observe`` on a receiver named
    ``doc`` (``doc.observe``, ``self.document.doc.observe``: how the code names its
    documents; a metric's ``observe`` is on a histogram)."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name, receiver = node.func.attr, node.func.value
        on_doc = (isinstance(receiver, ast.Name) and receiver.id == "doc") or (
            isinstance(receiver, ast.Attribute) and receiver.attr == "doc"
        )
        if name in {"observe_deep", "observe_subdocs"} or (name == "observe" and on_doc):
            found.append((node.lineno, ast.unparse(node.func)))
    return found


def test_documents_are_observed_through_observe_weakly() -> None:
    """pycrdt keeps a document's observers where Python's cyclic collector cannot see
    them: an observer that holds its document (most do) kept both in memory for good, a
    room's documents on every load (``session/observers.py``, the one place allowed)."""
    found = [
        f"{path.relative_to(ROOT)}:{line} {call}"
        for path in _tracked_python(("server", "session", "authz", "clients"))
        if path != ROOT / "session" / "observers.py"
        for line, call in document_observers(ast.parse(path.read_text(), str(path)))
    ]
    assert found == []
    # What the code did before: the rule finds it (and not a histogram's observe).
    before = (
        "self._subscription = doc.observe(self._capture)\n"
        "self.document.doc.observe(self._capture)\n"
        "self.metrics.queue_wait.observe(0.5)\n"
    )
    assert [line for line, _ in document_observers(ast.parse(before))] == [1, 2]
