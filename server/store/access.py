"""Persistence of what permissions need: custom roles, documents, tools, private items, audit
(the rows handed out are in ``access_rows.py``).

Rows that must commit with a document change (a private item behind a placeholder, the audit
record of a run) are written with the ``insert_*`` functions inside the room's transaction.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Row, Select, and_, column, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.authz.policy import Readers, restriction_from_json, restriction_to_json
from parley.authz.tokens import ADMIN_ACTOR, ClientClaims
from parley.server.store import horizon
from parley.server.store.access_rows import (
    AuditPage,
    AuditRow,
    DocumentRow,
    DocumentSizes,
    PrivateItem,
    Revocation,
    TokenRow,
    ToolRow,
    cut_page,
)
from parley.server.store.direct_sqlite import direct
from parley.server.store.rows import (
    MemberRow,
    count_members_change,
    count_role_change,
    hold_role,
    lock_session,
    read_member,
)
from parley.server.store.tables import (
    audit_log,
    client_tokens,
    documents,
    members,
    private_items,
    roles,
    sessions,
    side_thread_turns,
    tools,
)
from parley.session.errors import Conflict

if TYPE_CHECKING:
    from parley.server.store.database import Database
    from parley.server.store.link_tokens import LinkRefusal, Revoked


# PostgreSQL's channel for a session whose settings or members changed (payload: its id):
# sent with the change's own commit, so a node that follows the session takes it up before
# the document's updates committed after it (``server.cluster.node``).
CHANNEL_SETTINGS = "parley_settings"


def _readers_json(readers: Readers) -> str:
    return json.dumps({"users": sorted(readers.users), "roles": sorted(readers.roles)})


def _readers(row: Any) -> Readers:
    data = json.loads(row.readers)
    return Readers(row.id, frozenset(data["users"]), frozenset(data["roles"]))


def _document(row: Any) -> DocumentRow:
    readers = _readers(row)
    return DocumentRow(row.id, row.session_id, row.title, row.text, readers, row.created_at)


_DOCUMENT_HEAD = tuple(c for c in documents.c if c.name != "text")
# Documents' lengths known (they never change): SQLite counts a text's characters by
# reading all of it, 46 ms for 40 of 800 kB, at every list (review of the mend).
MAX_LENGTHS_KEPT = 10_000
_LENGTHS: OrderedDict[str, int] = OrderedDict()  # document id -> characters
# And their sizes as a list shows them (``DocumentSizes``), for the same reason: their
# reader lists' characters counted at every list's payment were 17 ms of the loop for
# 100 at their bounds (FX74). Document id -> its id's and title's characters, and its
# reader list's.
_SIZES: OrderedDict[str, tuple[int, int]] = OrderedDict()
_K = TypeVar("_K")


def _keep(kept: OrderedDict[str, _K], document_id: str, known: _K) -> None:
    """Keep what is known of a document (which never changes), forgetting the one used
    least lately past ``MAX_LENGTHS_KEPT``."""
    kept[document_id] = known
    kept.move_to_end(document_id)
    while len(kept) > MAX_LENGTHS_KEPT:
        kept.popitem(last=False)


def _document_head(row: Any, chars: int) -> DocumentRow:
    readers = _readers(row)
    return DocumentRow(row.id, row.session_id, row.title, "", readers, row.created_at, chars)


# Bytes of reader lists parsed between two turns of the event loop (a few ms of it).
PARSED_BYTES_PER_TURN = 256 * 1024


async def _parsed(rows: Sequence[Any], parse: Callable[[Any], DocumentRow]) -> list[DocumentRow]:
    """``parse`` of each of ``rows``, giving the loop back every ``PARSED_BYTES_PER_TURN``
    bytes of reader lists parsed: 100 documents' lists at their bounds are 22 MB, about
    0.3 s to parse (FX67), as long as to encode (``http.access.document_list_json``)."""
    parsed: list[DocumentRow] = []
    since_turn = 0
    for row in rows:
        parsed.append(parse(row))
        since_turn += len(row.readers)
        if since_turn >= PARSED_BYTES_PER_TURN:
            since_turn = 0
            await asyncio.sleep(0)
    return parsed


def _count_documents(session_id: str) -> Select[Any]:
    return select(func.count()).select_from(documents).where(documents.c.session_id == session_id)


def _document_ids(connection: AsyncConnection, session_id: str) -> Select[Any]:
    """The session's documents' ids, read on SQLite by the index of session ids and then
    the rows' ids (stored before their text): it would walk ``ix_documents_heads`` and the
    pages of its reader lists, 5 ms for 100 at their bounds against 0.05 (FX74)."""
    if connection.dialect.name != "sqlite":
        return select(documents.c.id).where(documents.c.session_id == session_id)
    # SQLAlchemy renders no table hint for SQLite.
    by_session = text("documents INDEXED BY ix_documents_session_id")
    return select(column("id")).select_from(by_session).where(column("session_id") == session_id)


def _tool(row: Any) -> ToolRow:
    return ToolRow(
        row.name,
        row.description,
        json.loads(row.parameters),
        row.url,
        row.capability,
        row.secret,
        row.timeout_ms,
        row.created_at,
    )


async def insert_private(
    connection: AsyncConnection, session_id: str, item: PrivateItem, now: int
) -> None:
    await connection.execute(
        insert(private_items).values(
            entry_id=item.entry_id,
            session_id=session_id,
            kind=item.kind,
            text=item.text,
            restriction=json.dumps(restriction_to_json(item.restriction)),
            created_at=now,
        )
    )


async def read_reader_lists(connection: AsyncConnection, session_id: str) -> set[Readers]:
    """Every reader list in the session: its documents' and its restricted items' (which
    outlive a deleted document, and name tool results' readers), and its side-threads'
    turns' (a webhook tool's readers may be named there alone). In a transaction that
    locked the session (``lock_session``): as of its commit for the documents, which are
    attached and members changed under that lock."""
    lists = {
        _readers(row)
        for row in await connection.execute(
            select(documents.c.id, documents.c.readers).where(documents.c.session_id == session_id)
        )
    }
    restrictions = await connection.execute(
        select(private_items.c.restriction)
        .where(private_items.c.session_id == session_id)
        .distinct()
    )
    turns = await connection.execute(
        select(side_thread_turns.c.restriction)
        .where(side_thread_turns.c.session_id == session_id)
        .distinct()
    )
    for (restriction,) in [*restrictions, *turns]:
        lists.update(restriction_from_json(json.loads(restriction)))
    return lists


async def insert_client_token(
    connection: AsyncConnection, claims: ClientClaims, now: int, actor: str = ADMIN_ACTOR
) -> Revoked:
    """Record a client token just minted (its session's expired ones are deleted on the
    way), in the transaction that read its member. Its member is someone now: the tokens
    from other members' links that name them are revoked (``link_tokens.revoke_known``,
    audited as ``actor``'s); returns those."""
    # Imported here: ``link_tokens`` writes its audit records with this module's.
    from parley.server.store.link_tokens import revoke_known

    await connection.execute(
        delete(client_tokens).where(
            and_(
                client_tokens.c.session_id == claims.session_id,
                client_tokens.c.expires_at <= now,
            )
        )
    )
    await connection.execute(
        insert(client_tokens).values(
            id=claims.token_id,
            session_id=claims.session_id,
            user_id=claims.user_id,
            expires_at=claims.expires_at,
            made_by=claims.made_by or None,
        )
    )
    return await revoke_known(
        connection,
        claims.user_id,
        now * 1000,
        session_id=claims.session_id,
        kept_maker=claims.made_by,
        actor=actor,
    )


# Built once: a run and many commands write an audit record (see ``command_statements``).
_INSERT_AUDIT = direct(insert(audit_log))


async def insert_audit(
    connection: AsyncConnection,
    session_id: str,
    at: int,
    kind: str,
    actor: str,
    data: dict[str, Any],
) -> None:
    row = {"session_id": session_id, "at": at, "kind": kind, "actor": actor}
    await connection.execute(_INSERT_AUDIT, {**row, "data": json.dumps(data)})


class AccessStore:
    def __init__(self, store: Database) -> None:
        self.store = store
        # Process-wide, by document id: an AccessStore is made per REST call.
        self._lengths = _LENGTHS
        self._sizes = _SIZES

    # -- custom roles ---------------------------------------------------------------------

    async def list_roles(self) -> dict[str, frozenset[str]]:
        async with self.store.read() as connection:
            return await read_roles(connection)

    async def put_role(self, name: str, capabilities: frozenset[str], now: int) -> Revoked:
        """Define or redefine custom role ``name`` (``now``, ms). In the sessions where a
        member holds it, the tokens from members' links are judged again by the reader
        lists and the roles as stored after it (``link_tokens.revoke_by_stored``; review
        RA-1: an edit that took a maker's ``read:<doc>`` left her link's token reading
        it); returns those revoked."""
        # Imported here: ``link_tokens`` writes its audit records with this module's.
        from parley.server.store.link_tokens import revoke_by_stored

        value = json.dumps(sorted(capabilities))
        async with self.store.transaction() as tx:
            connection = tx.connection
            # Cluster mode: the running nodes judge their next writes by it, from its commit.
            await count_role_change(connection, name)
            # Its sessions locked before the role's row, in one order, as a member change
            # locks its session before the role it gives (their lease rows came first).
            held = select(members.c.session_id).where(members.c.role == name)
            await connection.execute(
                select(sessions.c.id)
                .where(sessions.c.id.in_(held))
                .order_by(sessions.c.id)
                .with_for_update()
            )
            result = await connection.execute(
                update(roles).where(roles.c.name == name).values(capabilities=value)
            )
            if not result.rowcount:
                await connection.execute(
                    insert(roles).values(name=name, capabilities=value, created_at=now)
                )
            revoked = await revoke_by_stored(connection, held.scalar_subquery(), now)
        return revoked

    async def delete_role(self, name: str) -> bool:
        """Delete a custom role; ``Conflict`` while a member still has it."""
        async with self.store.transaction() as tx:
            # Held first: a member given the role meanwhile waits, and finds it gone.
            await hold_role(tx.connection, name, to_delete=True)
            used = (
                await tx.connection.execute(
                    select(func.count()).select_from(members).where(members.c.role == name)
                )
            ).scalar_one()
            if used:
                raise Conflict(f"role {name!r} is held by {used} member(s); change them first")
            result = await tx.connection.execute(delete(roles).where(roles.c.name == name))
        return bool(result.rowcount)

    # -- client tokens --------------------------------------------------------------------

    async def record_token(
        self,
        session_id: str,
        user_id: str,
        now: int,
        mint: Callable[[MemberRow], tuple[str, ClientClaims]],
    ) -> tuple[MemberRow, str, ClientClaims, Revoked] | None:
        """Mint a token for a current member (``mint`` signs it with the membership's
        epoch) and record it, in one transaction with the membership read, so a token
        cannot be minted for a member being removed. None if ``user_id`` is no member.
        The session's expired token rows are deleted on the way; the tokens from other
        members' links that named the member are revoked (returned)."""
        async with self.store.transaction() as tx:
            connection = tx.connection
            await lock_session(connection, session_id)
            member = await read_member(connection, session_id, user_id)
            if member is None:
                return None
            token, claims = mint(member)
            revoked = await insert_client_token(connection, claims, now)
        return member, token, claims, revoked

    async def revoke_token(self, session_id: str, token_id: str, now_ms: int) -> Revocation | None:
        """Mark a token of the session revoked at ``now_ms`` (a token revoked again keeps
        its first time, and ``first`` is False); None if there is no such unexpired token."""
        where = and_(
            client_tokens.c.session_id == session_id,
            client_tokens.c.id == token_id,
            client_tokens.c.expires_at > now_ms // 1000,
        )
        async with self.store.transaction() as tx:
            # Cluster mode: after the writes of the running node that hold the lease row,
            # before those that wait for it (their fence reads the token: review of RG-2).
            await lock_session(tx.connection, session_id)
            row = (await tx.connection.execute(select(client_tokens).where(where))).first()
            if row is None:
                return None
            revoked_at = row.revoked_at
            if revoked_at is None:
                revoked_at = now_ms
                await tx.connection.execute(
                    update(client_tokens).where(where).values(revoked_at=now_ms)
                )
                # Counted only when revoked here: a count makes the running node read the
                # members again and refuse its streamed text (an unknown token or one
                # revoked already did so for nothing).
                await count_members_change(tx.connection, session_id)
                if self.store.engine.dialect.name == "postgresql":
                    tx.notify(CHANNEL_SETTINGS, session_id)  # (as ``Store.change_member`` does)
        token = TokenRow(row.id, row.user_id, row.expires_at, revoked=True, revoked_at=revoked_at)
        return Revocation(token, first=row.revoked_at is None)

    async def revoked_tokens(self, session_id: str, now: int) -> dict[str, TokenRow]:
        """The session's revoked tokens that have not expired yet, by id."""
        async with self.store.read() as connection:
            return await read_revoked_tokens(connection, session_id, now)

    # -- documents ------------------------------------------------------------------------

    async def add_document(
        self,
        row: DocumentRow,
        max_per_session: int,
        link_refusal: Callable[[set[Readers]], LinkRefusal] | None = None,
        actor: str = ADMIN_ACTOR,
    ) -> Revoked:
        """Attach a document; with ``link_refusal`` (given the session's reader lists, its
        own among them, as read in the attach's transaction), the tokens from members'
        links it leaves refused are revoked in the same transaction (review RW-2: a maker
        read, through a member she took over, a document attached later that she may not
        read); returns them. The lists and the members are read under the session's lock,
        as a membership change reads them (FX37: a member raised while a document was
        attached was judged by neither with the other)."""
        # Imported here: ``link_tokens`` writes its audit records with this module's.
        from parley.server.store.link_tokens import revoke_refused

        revoked: Revoked = {}
        async with self.store.transaction() as tx:
            await lock_session(tx.connection, row.session_id)  # concurrent adds count in turn
            count = (await tx.connection.execute(_count_documents(row.session_id))).scalar_one()
            if count >= max_per_session:
                raise Conflict(f"at most {max_per_session} documents per session")
            readers = _readers_json(row.readers)
            await tx.connection.execute(
                insert(documents).values(
                    id=row.id,
                    session_id=row.session_id,
                    title=row.title,
                    text=row.text,
                    readers=readers,
                    created_at=row.created_at,
                )
            )
            if link_refusal is not None:
                lists = await read_reader_lists(tx.connection, row.session_id)
                revoked = await revoke_refused(
                    tx.connection, row.session_id, row.created_at, link_refusal(lists), actor
                )
        _keep(self._lengths, row.id, len(row.text))
        _keep(self._sizes, row.id, (len(row.id) + len(row.title), len(readers)))
        return revoked

    async def list_documents(
        self, session_id: str, *, texts: bool = True, only: str | None = None
    ) -> list[DocumentRow]:
        """The session's documents (``only``: that one alone, if there); ``texts=False``:
        without their text (``chars`` its length), as a list shows them (review: a viewer's
        list of titles read 32 MB of texts it could not read, 150 ms of CPU a call)."""
        columns = [documents] if texts else _DOCUMENT_HEAD
        chosen = documents.c.session_id == session_id
        if only is not None:
            # Not every document's reader lists to judge one (review RL-2's follow-up).
            chosen &= documents.c.id == only
        async with self.store.read() as connection:
            rows = list(
                await connection.execute(
                    select(*columns).where(chosen).order_by(documents.c.created_at, documents.c.id)
                )
            )
            missing = [] if texts else [row.id for row in rows if row.id not in self._lengths]
            if missing:  # once a document, in this process
                found = await connection.execute(
                    select(documents.c.id, func.length(documents.c.text)).where(
                        documents.c.id.in_(missing)
                    )
                )
                for document_id, chars in found:
                    _keep(self._lengths, str(document_id), int(chars))
        if texts:
            return await _parsed(rows, _document)
        # Taken now: other lists may push some out of what is kept while this one is parsed.
        lengths = {row.id: self._lengths.get(row.id, 0) for row in rows}
        return await _parsed(rows, lambda row: _document_head(row, lengths[row.id]))

    async def document_sizes(self, session_id: str) -> DocumentSizes:
        """The session's documents' count and sizes (``DocumentSizes``): their ids read
        from an index, their sizes counted once a document in this process, no text read
        nor row parsed."""
        c = documents.c
        async with self.store.read() as connection:
            ids = (await connection.execute(_document_ids(connection, session_id))).all()
            known = {str(i): self._sizes[i] for (i,) in ids if i in self._sizes}
            missing = [str(i) for (i,) in ids if i not in known]
            if missing:
                found = await connection.execute(
                    select(
                        c.id, func.length(c.id) + func.length(c.title), func.length(c.readers)
                    ).where(c.id.in_(missing))
                )
                for document_id, head_chars, reader_chars in found:
                    known[str(document_id)] = (int(head_chars), int(reader_chars))
                    _keep(self._sizes, str(document_id), known[str(document_id)])
        return DocumentSizes(
            len(known), sum(h for h, _ in known.values()), sum(r for _, r in known.values())
        )

    async def get_document(self, session_id: str, document_id: str) -> DocumentRow | None:
        async with self.store.read() as connection:
            row = (
                await connection.execute(
                    select(documents).where(
                        documents.c.session_id == session_id, documents.c.id == document_id
                    )
                )
            ).first()
        return None if row is None else _document(row)

    async def reader_lists(self, session_id: str) -> set[Readers]:
        """Every reader list in the session (``read_reader_lists``)."""
        async with self.store.read() as connection:
            return await read_reader_lists(connection, session_id)

    async def delete_document(self, session_id: str, document_id: str) -> bool:
        async with self.store.transaction() as tx:
            result = await tx.connection.execute(
                delete(documents).where(
                    and_(documents.c.session_id == session_id, documents.c.id == document_id)
                )
            )
        return bool(result.rowcount)

    # -- tools ----------------------------------------------------------------------------

    async def add_tool(self, row: ToolRow) -> None:
        try:
            async with self.store.transaction() as tx:
                await tx.connection.execute(
                    insert(tools).values(
                        name=row.name,
                        description=row.description,
                        parameters=json.dumps(row.parameters),
                        url=row.url,
                        capability=row.capability,
                        secret=row.secret,
                        timeout_ms=row.timeout_ms,
                        created_at=row.created_at,
                    )
                )
        except IntegrityError:
            raise Conflict(f"a tool named {row.name!r} exists; delete it first") from None

    async def list_tools(self) -> list[ToolRow]:
        async with self.store.read() as connection:
            rows = await connection.execute(select(tools).order_by(tools.c.name))
            return [_tool(row) for row in rows]

    async def delete_tool(self, name: str) -> bool:
        async with self.store.transaction() as tx:
            result = await tx.connection.execute(delete(tools).where(tools.c.name == name))
        return bool(result.rowcount)

    # -- private items and the audit log --------------------------------------------------

    async def private_items(self, session_id: str) -> list[PrivateItem]:
        async with self.store.read() as connection:
            rows = await connection.execute(
                select(private_items).where(private_items.c.session_id == session_id)
            )
            return [_private_item(row) for row in rows]

    async def private_item(self, session_id: str, entry_id: str) -> PrivateItem | None:
        async with self.store.read() as connection:
            rows = await connection.execute(
                select(private_items).where(
                    private_items.c.session_id == session_id,
                    private_items.c.entry_id == entry_id,
                )
            )
            row = rows.first()
        return None if row is None else _private_item(row)

    async def audit(
        self,
        session_id: str,
        at: int,
        kind: str,
        actor: str,
        data: dict[str, Any],
    ) -> None:
        async with self.store.transaction() as tx:
            await insert_audit(tx.connection, session_id, at, kind, actor, data)

    async def list_audit(
        self,
        session_id: str,
        *,
        limit: int,
        after: horizon.Place | int,
        kinds: Sequence[str] = (),
        actor: str | None = None,
    ) -> list[AuditRow]:
        """Records of a session after ``after`` (a record's place, or its id), oldest
        first, optionally filtered; none still being written, nor any after one
        (``horizon``)."""
        page = await self.audit_page(session_id, limit=limit, after=after, kinds=kinds, actor=actor)
        return page.rows

    async def audit_page(
        self,
        session_id: str,
        *,
        limit: int,
        after: horizon.Place | int,
        kinds: Sequence[str] = (),
        actor: str | None = None,
        max_bytes: int | None = None,
    ) -> AuditPage:
        """``list_audit``'s records, also at most ``max_bytes`` of their stored JSON
        together (the first however large: ``cut_page``), and whether more follow. Only
        the records kept are parsed."""
        async with self.store.read() as connection:
            query = await audit_query(connection, session_id, after, kinds, actor)
            result = await connection.execute(query.limit(limit + 1))
            # Stored as ASCII JSON (``json.dumps``): its length is its bytes.
            rows, more = cut_page(result, lambda row: len(row.data), limit, max_bytes)
            parsed = [
                AuditRow(
                    int(row.id), row.at, row.kind, row.actor, json.loads(row.data), int(row.xid)
                )
                for row in rows
            ]
            return AuditPage(parsed, more)


async def audit_query(
    connection: AsyncConnection,
    session_id: str,
    after: horizon.Place | int,
    kinds: Sequence[str] = (),
    actor: str | None = None,
) -> Select[Any]:
    """The records of a session after ``after``, optionally filtered, in a page's order
    (``horizon``); a filter reads through the index of its column in that order
    (``tables.audit_filter_index``)."""
    session = [audit_log.c.session_id == session_id]
    where, order = await horizon.after(connection, audit_log, session, after)
    if kinds:
        where.append(audit_log.c.kind.in_(kinds))
    if actor is not None:
        where.append(audit_log.c.actor == actor)
    return select(audit_log).where(and_(*where)).order_by(*order)


def _private_item(row: Row[Any]) -> PrivateItem:
    return PrivateItem(
        row.entry_id, row.kind, row.text, restriction_from_json(json.loads(row.restriction))
    )


async def read_roles(connection: AsyncConnection) -> dict[str, frozenset[str]]:
    """The custom roles as stored: their capabilities, by name."""
    rows = await connection.execute(select(roles).order_by(roles.c.name))
    return {row.name: frozenset(json.loads(row.capabilities)) for row in rows}


async def read_revoked_tokens(
    connection: AsyncConnection, session_id: str, now: int
) -> dict[str, TokenRow]:
    """The session's revoked tokens that have not expired yet (``now``, s), by id."""
    rows = await connection.execute(
        select(client_tokens).where(
            and_(
                client_tokens.c.session_id == session_id,
                client_tokens.c.revoked_at.is_not(None),
                client_tokens.c.expires_at > now,
            )
        )
    )
    return {
        row.id: TokenRow(row.id, row.user_id, row.expires_at, True, row.revoked_at) for row in rows
    }
