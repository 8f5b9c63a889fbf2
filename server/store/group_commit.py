"""Group commit: the document updates of many sessions, stored in one transaction.

Streamed reply text is a document update and nothing else. Stored one transaction each,
twenty sessions streaming at once queued behind one another (SQLite writes one
transaction at a time), so a token waited for the other sessions' commits. Here every
update submitted while a round commits joins the next round: one transaction and one
multi-row insert, whatever the number of sessions, so a session waits about one round.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import insert
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError

from parley.server.store.direct_sqlite import direct
from parley.server.store.tables import doc_updates
from parley.session.errors import NotFound, Unavailable

if TYPE_CHECKING:
    from parley.authz.policy import Subject
    from parley.authz.tokens import ClientClaims
    from parley.server.store.port import SessionTx, Transactional

MAX_ROUND_UPDATES = 512


class MembersMoved(Unavailable):
    """Streamed text judged by the members as they were: they changed since (on another
    node, not yet in force here), so it was not stored; judge it again."""


class WriteFence(Protocol):
    """Cluster mode: may this node write the session? Checked first in every write
    transaction (raise to refuse it); told each update it stores, in the same transaction
    (before or after the statement that stores it: what it sends goes with the commit)."""

    async def check(
        self,
        tx: SessionTx,
        member: str | None = None,
        token: ClientClaims | None = None,
        *,
        appended: bool = False,
    ) -> None:
        """Refuse the write unless this node may write the session; with ``member`` (a
        member's command, sent with the client token of claims ``token`` if known), read
        them, the token and the member whose invite link gave it as stored as of the
        commit, and judge the command by that (a change stored on another node meanwhile,
        not yet in force here: refused by the session core, a removed member's
        ``forbidden``, a revoked token's or one whose maker may no longer make its link
        ``unauthenticated``). Members or tokens changed since it last read them: read
        again, what the write and those after it are judged by; ``appended`` (streamed
        text, judged before this): refused then, ``MembersMoved``."""
        ...

    def holds(self) -> bool:
        """Whether this node writes the session, as far as it knows (no round trip)."""
        ...

    def published(self, tx: SessionTx) -> None: ...

    def kept_private(self, tx: SessionTx, entry_id: str) -> None:
        """Text only some members may read was stored for ``entry_id`` in ``tx``: the other
        nodes push it to their own sockets of those members after the commit."""
        ...

    def thread_changed(self, tx: SessionTx, thread_id: str, owner: str) -> None:
        """``owner``'s side-thread changed (or was deleted) in ``tx``: the other nodes tell
        their own sockets of ``owner`` after the commit."""
        ...

    async def readers_at_commit(self, tx: SessionTx) -> Callable[[str], Subject | None]:
        """Who each member is as of ``tx``'s commit (None: no member), read in it: what
        restricted text it stores is pushed to this node's sockets by. A member change
        stored on another node may not be in force here yet (review RH-3)."""
        ...


# Called with an update's id the moment its round committed, before its waiter wakes.
Stored = Callable[[int], None]


class Outcome(asyncio.Future[int]):
    """A round's answer for one update: its id, or the error that kept it out. It cannot be
    cancelled: a waiter cancelled meanwhile still learns whether its update was stored
    (``await`` raises ``CancelledError`` once it is settled, and ``result()`` tells), and
    it is woken by the round itself, with no task or waiter future in between."""

    def cancel(self, msg: object = None) -> bool:
        return False


@dataclass(slots=True)
class _Pending:
    session_id: str
    update: bytes
    fence: WriteFence | None
    stored: Outcome
    thread_id: str | None = None  # set: an update of that side-thread's document
    on_stored: Stored | None = None


# Built once (its cache key is walked once, not per call).
_INSERT_UPDATES = direct(
    insert(doc_updates).returning(doc_updates.c.id, sort_by_parameter_order=True)
)


# One session's update on SQLite, beneath SQLAlchemy (``UpdatesAlone``).
INSERT_UPDATE_SQLITE = str(
    insert(doc_updates).compile(dialect=sqlite.dialect(), column_keys=["session_id", "data"])
)

# Stores sessions' updates (session id, update) in a transaction of their own; their ids,
# in order. Refuses as a transaction does; a broken constraint raises ``IntegrityError``.
UpdatesAlone = Callable[[list[tuple[str, bytes]]], Awaitable[list[int]]]


def insert_updates(rows: Sequence[tuple[str, bytes]]) -> tuple[object, list[dict[str, object]]]:
    """The multi-row insert of ``rows`` (session id, update) and its parameters; its
    result gives the new ids in the order of ``rows``."""
    return _INSERT_UPDATES, [{"session_id": s, "data": data} for s, data in rows]


class GroupCommit:
    """Stores updates submitted from any session, a round at a time."""

    def __init__(
        self,
        store: Transactional,
        max_round: int = MAX_ROUND_UPDATES,
        *,
        alone: UpdatesAlone | None = None,
    ) -> None:
        """``alone``: the store's own way to commit a round of sessions' updates with no
        fence and no side-thread's update (SQLite's, beneath SQLAlchemy)."""
        self.store = store
        self.alone = alone
        self.max_round = max_round
        self._pending: list[_Pending] = []
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0

    def submit(
        self,
        session_id: str,
        update: bytes,
        fence: WriteFence | None,
        thread_id: str | None = None,
        on_stored: Stored | None = None,
    ) -> Outcome:
        """Queue an update (of side-thread ``thread_id``'s document if given, else of the
        session's); the outcome gives its update id once committed, or the error that kept
        it out (the round's own, or its session's fence refusing it).

        ``on_stored``: what must follow the commit at once (the broadcast), called by the
        round itself with the update's id, before the waiter wakes: a woken task waits its
        turn behind everything the loop has ready, and under load that wait was a third of
        a streamed token's way to the sockets (issue #22). If it raises, the outcome holds
        that error instead of the id (the caller's failure path: the update is stored, so
        the document is read back from the store)."""
        loop = asyncio.get_running_loop()
        stored = Outcome(loop=loop)
        self._pending.append(_Pending(session_id, update, fence, stored, thread_id, on_stored))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._commit_rounds(), name="group-commit")
        return stored

    async def _commit_rounds(self) -> None:
        while self._pending:
            batch = self._pending[: self.max_round]
            del self._pending[: self.max_round]
            refused: dict[int, Exception] = {}
            try:
                await self._commit(batch, refused)
            except (IntegrityError, sqlite3.IntegrityError, NotFound):
                # One session's update broke a constraint (its session was deleted
                # meanwhile: ``NotFound`` as the store tells it): store the others one by
                # one, so only it fails. Text its fence refused to be judged again stays
                # refused: the fence has read the members since, and would let it by.
                for item in batch:
                    moved = refused.get(id(item.fence))
                    if isinstance(moved, MembersMoved) and item.thread_id is None:
                        _settle(item, moved)
                        continue
                    try:
                        await self._commit([item])
                    except Exception as exc:
                        _settle(item, _unstored(exc))
            except Exception as exc:  # the store's own: Unavailable
                for item in batch:
                    _settle(item, exc)
            except BaseException:
                # Those still waiting for a round too: their writers cannot be cancelled
                # out of the wait (an ``Outcome`` cannot), so each must be told.
                stopping = [*batch, *self._pending]
                self._pending.clear()
                for item in stopping:
                    _settle(item, Unavailable("the server is stopping; nothing was stored"))
                raise
            self.rounds += 1

    async def _commit(
        self, batch: list[_Pending], refused: dict[int, Exception] | None = None
    ) -> None:
        """One round; raises its error, leaving every future of ``batch`` unsettled.
        ``refused`` (by the id of a fence): what each fence refused, kept even when the
        round then fails."""
        if self.alone is not None and all(i.fence is None and i.thread_id is None for i in batch):
            _stored(batch, await self.alone([(i.session_id, i.update) for i in batch]))
            return
        refused = {} if refused is None else refused
        async with self.store.transaction("document updates", group_round=True) as tx:
            fences = {id(i.fence): i.fence for i in batch if i.fence is not None}
            # Sessions with text of their own document here (a side-thread's is its owner's).
            texts = {id(i.fence) for i in batch if i.thread_id is None}
            moved: set[int] = set()
            for key, fence in fences.items():
                try:
                    await fence.check(tx, appended=key in texts)
                except MembersMoved as exc:  # its session's text only: judged again
                    refused[key] = exc
                    moved.add(key)
                except (DBAPIError, OSError):
                    # The database's (a connection lost): the round's transaction with it,
                    # so the round fails, ``Unavailable`` to every writer of it (review
                    # rx-2: the driver's error went to this session's writer, and the
                    # others' failed on the broken transaction, both ``internal_error``).
                    raise
                except Exception as exc:  # this session only: the others commit
                    refused[key] = exc
            admitted = [
                i
                for i in batch
                if id(i.fence) not in refused or (id(i.fence) in moved and i.thread_id is not None)
            ]
            ids = await _append(tx, admitted, last=not fences)
            for item in admitted:
                if item.fence is not None:
                    item.fence.published(tx)
        stored = {id(i) for i in admitted}
        for item in batch:
            if id(item) not in stored:
                _settle(item, refused[id(item.fence)])
        _stored(admitted, ids)

    async def close(self) -> None:
        """Let the rounds under way finish (their callers are waiting)."""
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await self._task


async def _append(tx: SessionTx, items: list[_Pending], *, last: bool) -> list[int]:
    """Store ``items`` (sessions' updates and side-threads'); their ids, in order.
    ``last``: nothing else is written in ``tx`` (no fence, no notification): sessions'
    updates alone are then one statement on its own (``StoreTx.append_updates``)."""
    ids: dict[int, int] = {}
    sessions = [i for i in items if i.thread_id is None]
    threads = [i for i in items if i.thread_id is not None]
    updates = [(i.session_id, i.update) for i in sessions]
    stored = await tx.append_updates(updates, last=last and not threads)
    ids.update(zip(map(id, sessions), stored, strict=True))
    rows = [(i.session_id, i.thread_id or "", i.update) for i in threads]
    ids.update(zip(map(id, threads), await tx.append_thread_updates(rows), strict=True))
    return [ids[id(i)] for i in items]


def _stored(batch: list[_Pending], ids: list[int]) -> None:
    for item, update_id in zip(batch, ids, strict=True):
        if item.stored.done():
            continue
        if item.on_stored is not None:
            try:
                item.on_stored(update_id)
            except Exception as exc:
                item.stored.set_exception(exc)
                continue
        item.stored.set_result(update_id)


def _settle(item: _Pending, exc: BaseException) -> None:
    if not item.stored.done():
        item.stored.set_exception(exc)


def _unstored(exc: Exception) -> Exception:
    """What a caller is told of its own update's failure: a broken constraint is a
    fault of the data it was stored with, not of the caller."""
    if isinstance(exc, (IntegrityError, sqlite3.IntegrityError, NotFound)):
        return Unavailable("this session's update could not be stored")
    return exc
