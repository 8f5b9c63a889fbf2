"""Transcript entries for tests of the context builder, without a document."""

from __future__ import annotations

import re
from collections.abc import Sequence

from parley.session.attribution import (
    attribution_line,
    escape_text,
    is_server_line,
    name,
    placed,
)
from parley.session.context import BuiltContext
from parley.session.dedup import as_written
from parley.session.entries import Entry, EntryKind
from parley.session.history import outcome_line

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


def assert_attributed(
    built: BuiltContext, shown: Sequence[Entry], prompt_ids: Sequence[str]
) -> None:
    """The attribution rules of a model input, whatever was folded.

    ``shown`` are the entries the input should draw on (visible, not pinned, not withheld);
    each is in exactly one message, under its own author with its own verb: ``asks you``
    only for the run's prompts, ``wrote`` for everything else; every message is one entry
    (nothing is merged), in story order; a user message's text is the escaped wording of
    its entry, or (a message, never a prompt) a reference to an earlier message of the
    input written the same as written; no line of a member's text reads as the server's."""
    by_id = {e.id: e for e in shown}
    drawn = [entry_id for ids in built.sources for entry_id in ids]
    assert sorted(drawn) == sorted(by_id)  # nothing lost, nothing twice
    asking = set(prompt_ids)
    history = [by_id[i].seq for i in drawn if i not in asking]
    assert history == sorted(history)  # the story's order
    askers: list[str] = []
    given = {by_id[i].seq: by_id[i] for i in drawn}
    # The numbers references name: the messages they name show them on their line.
    named = {int(n) for m in built.request.messages for n in _NAMED.findall(m.content)}
    for message, ids in zip(built.request.messages, built.sources, strict=True):
        assert len(ids) == 1  # nothing is merged
        sources = [by_id[i] for i in ids]
        if sources[-1].kind not in (EntryKind.MESSAGE, EntryKind.PROMPT):
            continue
        wrote = [s.author for s in sources if s.id not in asking]
        asks = [s.author for s in sources if s.id in asking]
        askers += asks
        line = attribution_line(wrote, asks)
        seq = sources[-1].seq
        assert message.attribution == (placed(line, f"message #{seq}") if seq in named else line)
        body, ended = message.body, outcome_line(sources[-1])
        if ended is not None:  # the server's line on a prompt with no full answer, last
            body, _, last = body.rpartition("\n")
            assert last == ended
        reference = _SAME_TEXT.fullmatch(body)
        if reference is None:
            assert body == escape_text(sources[-1].content)
            assert not any(is_server_line(line) for line in body.splitlines())
        else:
            first = given[int(reference[2])]
            assert sources[-1].kind is EntryKind.MESSAGE
            assert reference[1] == name(first.author) and first.seq < sources[-1].seq
            assert as_written(first.content) == as_written(sources[-1].content)
        assert message.author == (asks or wrote)[-1]
    assert built.request.issuers == tuple(dict.fromkeys(askers))


_SAME_TEXT = re.compile(r"\[the same text (.+) wrote in message #(\d+)\]")
_NAMED = re.compile(r"(?m)^\[the same .* message #(\d+)\]$")
