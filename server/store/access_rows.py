"""What permissions need, as the store hands it out: a session's documents, the webhook
tools, private items, client tokens and audit records, each a frozen row both store adapters
(``access.py``, ``memory_access.py``) return, and the fingerprint of the roles and tools a
node has in force."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

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
class AuditRow:
    id: int
    at: int
    kind: str
    actor: str
    data: dict[str, Any]
    xid: int = 0  # its writing transaction's (``store.horizon``)


def access_digest(custom_roles: Mapping[str, frozenset[str]], webhooks: Sequence[ToolRow]) -> str:
    """A fingerprint of the roles and tools a node has in force: two nodes with the same
    digest judge every command alike."""
    data = {
        "roles": {name: sorted(caps) for name, caps in sorted(custom_roles.items())},
        "tools": [asdict(tool) for tool in webhooks],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
