"""Permissions' rows of the in-memory store (``server.store.memory``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from parley.authz.policy import Readers
from parley.server.store.access_rows import (
    AuditPage,
    AuditRow,
    DocumentRow,
    PrivateItem,
    TokenRow,
    ToolRow,
    cut_page,
)
from parley.server.store.horizon import Place

if TYPE_CHECKING:
    from parley.server.store.memory import MemoryStore
    from parley.server.store.memory_tables import SessionRows


class MemoryAccess:
    """Permissions' rows in memory: what the runtime reads (``RuntimeAccess``) and what a
    test sets up (roles, tools, documents, revoked tokens)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def _rows(self, session_id: str) -> SessionRows | None:
        return self.store._read(session_id)

    async def private_items(self, session_id: str) -> list[PrivateItem]:
        s = self._rows(session_id)
        return [] if s is None else list(s.private.values())

    async def revoked_tokens(self, session_id: str, now: int) -> dict[str, TokenRow]:
        s = self._rows(session_id)
        tokens = [] if s is None else s.tokens.values()
        return {t.id: t for t in tokens if t.revoked and t.expires_at > now}

    async def revoke_token(self, session_id: str, token: TokenRow) -> None:
        async with self.store.transaction() as tx:
            tx.session(session_id).tokens[token.id] = replace(token, revoked=True)

    async def audit(
        self, session_id: str, at: int, kind: str, actor: str, data: dict[str, Any]
    ) -> None:
        async with self.store.transaction() as tx:
            await tx.insert_audit(session_id, at, kind, actor, data)

    async def list_audit(
        self,
        session_id: str,
        *,
        limit: int,
        after: Place | int,
        kinds: Sequence[str] = (),
        actor: str | None = None,
    ) -> list[AuditRow]:
        page = await self.audit_page(session_id, limit=limit, after=after, kinds=kinds, actor=actor)
        return page.rows

    async def audit_page(
        self,
        session_id: str,
        *,
        limit: int,
        after: Place | int,
        kinds: Sequence[str] = (),
        actor: str | None = None,
        max_bytes: int | None = None,
    ) -> AuditPage:
        s = self._rows(session_id)
        after_id = after.id if isinstance(after, Place) else after  # ids: in commit order
        rows = (
            r
            for r in ([] if s is None else s.audit)
            if r.id > after_id and (not kinds or r.kind in kinds) and actor in (None, r.actor)
        )
        kept, more = cut_page(rows, lambda r: len(json.dumps(r.data)), limit, max_bytes)
        return AuditPage(kept, more)

    async def add_document(self, row: DocumentRow) -> None:
        async with self.store.transaction() as tx:
            tx.session(row.session_id).documents[row.id] = row

    async def list_documents(self, session_id: str, *, texts: bool = True) -> list[DocumentRow]:
        s = self._rows(session_id)
        rows = [] if s is None else list(s.documents.values())
        if not texts:
            rows = [replace(r, text="", chars=r.length) for r in rows]
        return sorted(rows, key=lambda r: (r.created_at, r.id))

    async def get_document(self, session_id: str, document_id: str) -> DocumentRow | None:
        s = self._rows(session_id)
        return None if s is None else s.documents.get(document_id)

    async def reader_lists(self, session_id: str) -> set[Readers]:
        s = self._rows(session_id)
        if s is None:
            return set()
        lists = {d.readers for d in s.documents.values()}
        for item in s.private.values():
            lists.update(item.restriction)
        for thread in s.threads.values():
            for turn in thread.turns:
                lists.update(turn.restriction)
        return lists

    async def put_role(self, name: str, capabilities: frozenset[str]) -> None:
        async with self.store.transaction() as tx:
            tx.roles[name] = capabilities

    async def list_roles(self) -> dict[str, frozenset[str]]:
        return dict(sorted(self.store._tables.roles.items()))

    async def add_tool(self, row: ToolRow) -> None:
        async with self.store.transaction() as tx:
            tx.tools[row.name] = row

    async def list_tools(self) -> list[ToolRow]:
        return [self.store._tables.tools[name] for name in sorted(self.store._tables.tools)]
