"""Transcript entries for tests of the context builder, without a document."""

from __future__ import annotations

from session.schema import Entry, EntryKind

DEFAULT_STATUS = {EntryKind.MESSAGE: "posted", EntryKind.PROMPT: "queued", EntryKind.REPLY: "done"}


def entry(
    n: int,
    author: str,
    text: str,
    kind: EntryKind = EntryKind.MESSAGE,
    status: str | None = None,
) -> Entry:
    """Entry ``e{n}`` with sequence number ``n``; a prompt waits unless told otherwise."""
    return Entry(
        id=f"e{n}",
        seq=n,
        kind=kind,
        author=author,
        role="assistant" if kind is EntryKind.REPLY else "user",
        status=status or DEFAULT_STATUS[kind],
        content=text,
        created_at=n,
    )
