"""The admin key and the token-signing key: from settings, or generated once and kept.

A generated key is written to the data directory (mode 0600) so it survives restarts; the
admin key is never printed or logged (the log says where it is kept).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Keys:
    admin_key: str
    signing_key: str
    admin_key_created: bool


def _load_or_create(path: Path) -> tuple[str, bool]:
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value, True


def keys_problem(data_dir: Path, admin_key: str | None, secret_key: str | None) -> str | None:
    """Why a key to be generated could not be kept in ``data_dir`` (the nearest of its
    folders that is there is not a writable folder), judged before anything is written;
    None when it could, or when no key is to be generated."""
    to_generate = [
        name
        for name, given in (("admin_key", admin_key), ("secret_key", secret_key))
        if given is None and not (data_dir / name).exists()
    ]
    if not to_generate:
        return None
    folder = data_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
        return None
    where = f"cannot keep the generated keys in {data_dir}"
    return f"PARLEY_DATA_DIR: {where}: {folder} is not a folder it may write"


def resolve_keys(data_dir: Path, admin_key: str | None, secret_key: str | None) -> Keys:
    created = False
    if admin_key is None:
        admin_key, created = _load_or_create(data_dir / "admin_key")
    if secret_key is None:
        secret_key, _ = _load_or_create(data_dir / "secret_key")
    return Keys(admin_key=admin_key, signing_key=secret_key, admin_key_created=created)
