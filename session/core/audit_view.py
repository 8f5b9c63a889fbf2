"""What a reader of the audit log is shown of one record.

A ``model_call`` record holds the call's token counts as its provider reported them, and a
count tells the size of what the call read: the difference between two steps of one run is
the size of the tool result the later one read, a side-thread call's counts the size of its
owner's private prompt and reply (review RC-1). So, as a ``too_large`` reason tells no count
when its run drew on what not every member may read (``runs.shown_ending``), a call's
counts, its time and ``drew_on`` (the reader lists of what it drew on: its context, pins
and tool results so far) are shown only to a reader who may read all it drew on, judged
with their rights now as the transcript judges a reply, and a side-thread call's only to
the thread's owner. The admin key reads them all. What is withheld is null, and named in
``withheld``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from parley.authz.policy import Subject, may_read, restriction_from_json

# The fields of a ``model_call`` record withheld from a reader who may not read what the
# call drew on; the record always has them (null when withheld or never known). A call's
# time (``ms``) goes with its counts: it grows with the tokens streamed out; and so does
# its start (``started_at``): the record's ``at`` (its end) less its start was its time
# (review RG-1).
SIZE_FIELDS = ("drew_on", "input_tokens", "output_tokens", "ms", "started_at")


@dataclass(frozen=True, slots=True)
class ShownRecord:
    """A record's data as one reader is shown it, and the fields withheld from them."""

    data: dict[str, Any]
    withheld: tuple[str, ...] = ()


def shown_record(kind: str, data: Mapping[str, Any], reader: Subject | None) -> ShownRecord:
    """``data`` of a ``kind`` record as ``reader`` reads it (None: the admin key, which reads
    everything). Only a ``model_call`` record's sizes are judged; other records are whole."""
    shown = dict(data)
    if kind != "model_call":
        return ShownRecord(shown)
    shown.setdefault("drew_on", None)  # written before calls recorded it
    if reader is None or _may_read_sizes(shown, reader):
        return ShownRecord(shown)
    withheld = tuple(name for name in SIZE_FIELDS if shown.get(name) is not None)
    for name in withheld:
        shown[name] = None
    return ShownRecord(shown, withheld)


def _may_read_sizes(data: Mapping[str, Any], reader: Subject) -> bool:
    """Whether ``reader`` may read everything the call of ``data`` drew on."""
    if data.get("thread_id") is not None and _owner(data) != reader.user_id:
        return False  # another member's private side-thread
    drew_on = data["drew_on"]
    if not isinstance(drew_on, list):
        # Not recorded (a record written before it was, or a run cut off by a crash, whose
        # counts are null): what the call read is unknown, so its counts are not told.
        return False
    return may_read(reader, restriction_from_json(drew_on))


def _owner(data: Mapping[str, Any]) -> str | None:
    """A side-thread call's one issuer: the thread's owner."""
    issuers = data.get("issuers")
    if not isinstance(issuers, list) or len(issuers) != 1 or not isinstance(issuers[0], dict):
        return None
    owner = issuers[0].get("user_id")
    return owner if isinstance(owner, str) else None
