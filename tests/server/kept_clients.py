"""Test helpers: an awareness client id whose socket closed stays its member's, seen
through raw y-protocols awareness frames (what a stock client sends) on real sockets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tests.yclient import YClient

SHOWN: dict[str, Any] = {"user": {"name": "Vera"}}


async def show_then_leave(owner: YClient, watcher: YClient, client_id: int) -> None:
    """``owner`` shows itself under ``client_id`` and closes its socket; ``watcher`` saw it
    come and go."""
    await owner.set_awareness(client_id, 1, SHOWN)
    await watcher.wait_until(lambda c: c.awareness.get(client_id) is not None)
    await owner.close()
    await watcher.wait_until(lambda c: client_id in c.awareness and c.awareness[client_id] is None)


async def kept_for_its_member(
    owner_back: Callable[[], Awaitable[YClient]],
    owner_id: str,
    other: YClient,
    watcher: YClient,
    client_id: int,
) -> None:
    """``other``, another member, tries ``client_id`` (a later clock, the owner's look): it
    is not shown to ``watcher``; the owner, back on a socket of ``owner_back``'s, is."""
    await other.set_awareness(client_id, 50, SHOWN)
    await other.set_awareness(client_id + 1, 1, {"user": {"name": "Mallory"}})
    await watcher.wait_until(lambda c: client_id + 1 in c.awareness)
    # One socket's frames are relayed in order: had the first gone out, it went out first.
    assert watcher.awareness.get(client_id) is None, watcher.awareness
    back = await owner_back()
    await back.set_awareness(client_id, 2, SHOWN)
    await watcher.wait_until(lambda c: (c.awareness.get(client_id) or {}).get("parley") is not None)
    assert watcher.awareness[client_id] == {**SHOWN, "parley": {"user_id": owner_id}}
