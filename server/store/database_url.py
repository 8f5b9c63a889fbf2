"""Whether a database URL is one the server can open an engine of, judged with the
settings (before anything is touched), not when the engine is made."""

from __future__ import annotations

from sqlalchemy import exc, make_url


def check_database_url(url: str) -> str:
    """``url`` if an engine can be made of it: it parses and names a dialect SQLAlchemy
    knows, with an asyncio driver (SQLite's any: its file is opened through aiosqlite);
    else ``ValueError`` saying what is wrong (review RL-4: a traceback at start)."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        raise ValueError("not a database URL (such as sqlite+aiosqlite:///./parley.db)") from None
    if parsed.get_backend_name() == "sqlite":
        return url
    try:
        dialect = parsed.get_dialect()
    except exc.NoSuchModuleError:
        raise ValueError(f"no database dialect {parsed.drivername!r} is installed") from None
    if not dialect.is_async:
        raise ValueError(
            f"{parsed.drivername!r} is not an asyncio driver: use postgresql+asyncpg://… "
            "or sqlite+aiosqlite://…"
        )
    return url
