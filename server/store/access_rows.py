"""What permissions need, as the store hands it out: a session's documents, the webhook
tools, private items, client tokens and audit records, each a frozen row both store adapters
(``access.py``, ``memory_access.py``) return, and the fingerprint of the roles and tools a
node has in force."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from parley.authz.policy import Readers, Restriction


@dataclass(frozen=True, slots=True)
class DocumentRow:
    id: str
    session_id: str
    title: str
    text: str  # "" when read without its text (``AccessStore.list_documents``)
    readers: Readers
    created_at: int
    chars: int = -1  # the text's length; -1: ``len(text)``

    @property
    def length(self) -> int:
        return len(self.text) if self.chars < 0 else self.chars


@dataclass(frozen=True, slots=True)
class DocumentSizes:
    """A session's documents as a list shows them, in sizes the store gives with their
    count, no row parsed (``AccessStore.document_sizes``): their ids' and titles'
    characters, and their reader lists' characters as stored (``json.dumps``: ASCII, and
    never shorter than the list's JSON of them)."""

    count: int
    head_chars: int
    reader_chars: int


@dataclass(frozen=True, slots=True)
class ToolRow:
    name: str
    description: str
    parameters: dict[str, Any]
    url: str
    capability: str
    secret: str
    timeout_ms: int
    created_at: int


@dataclass(frozen=True, slots=True)
class PrivateItem:
    entry_id: str
    kind: str
    text: str
    restriction: Restriction


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A client token issued: whose, until when (seconds), and whether it was revoked, and
    when (``revoked_at``, ms; 0: not known)."""

    id: str
    user_id: str
    expires_at: int
    revoked: bool = False
    revoked_at: int = 0


@dataclass(frozen=True, slots=True)
class Revocation:
    """A client token's revocation as stored (``AccessStore.revoke_token``): the token, and
    whether this call revoked it (``first``; False: it was revoked already and nothing
    changed, so nothing is audited or put in force again)."""

    token: TokenRow
    first: bool


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at: int
    kind: str
    actor: str
    data: dict[str, Any]
    xid: int = 0  # its writing transaction's (``store.horizon``)


@dataclass(frozen=True, slots=True)
class AuditPage:
    """A page of audit records, and whether more follow it (the filter's, read now)."""

    rows: list[AuditRow]
    more: bool


T = TypeVar("T")


def cut_page(
    rows: Iterable[T], size: Callable[[T], int], limit: int, max_bytes: int | None
) -> tuple[list[T], bool]:
    """The first of ``rows`` (read one past ``limit``), at most ``limit`` of them and of
    ``max_bytes`` together by ``size`` (None: no bound), and whether any are left out. The
    first is taken however large, so a row past the bound is read, alone, not skipped."""
    kept: list[T] = []
    total = 0
    for row in rows:
        if len(kept) == limit:
            return kept, True
        total += size(row)
        if kept and max_bytes is not None and total > max_bytes:
            return kept, True
        kept.append(row)
    return kept, False


def access_digest(custom_roles: Mapping[str, frozenset[str]], webhooks: Sequence[ToolRow]) -> str:
    """A fingerprint of the roles and tools a node has in force: two nodes with the same
    digest judge every command alike."""
    data = {
        "roles": {name: sorted(caps) for name, caps in sorted(custom_roles.items())},
        "tools": [asdict(tool) for tool in webhooks],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
