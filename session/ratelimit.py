"""Token buckets for what members' frames cost the server, sans I/O: the caller passes the time.

One mechanism for every budget: a ``TokenBucket`` per socket or per member and kind of
spend (``Spend``), charged what a frame costs (``cost_of``: a count, or its bytes), and an
``AbuseCounter`` per socket that closes a client refused again and again. A caller with
no member to charge (a client's address, an invite link) has ``KeyedBuckets``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from parley.session.errors import ParleyError, RateLimited, TooLarge
from parley.session.yprotocol import AwarenessMessage, ClientMessage, SyncMessage, SyncType


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float
    burst: float


class TokenBucket:
    """Allows ``burst`` events at once and ``per_second`` on average after that."""

    __slots__ = ("_tokens", "_updated", "rate")  # a few on every socket

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self._tokens = rate.burst
        self._updated = now

    def allow(self, now: float, cost: float = 1.0) -> bool:
        elapsed = max(now - self._updated, 0.0)
        self._updated = now
        self._tokens = min(self.rate.burst, self._tokens + elapsed * self.rate.per_second)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def spend(self, now: float, cost: float) -> None:
        """Take ``cost`` whether or not it is there (what was already done is paid after):
        the bucket may owe up to one burst, and allows nothing until it is paid back."""
        self.allow(now, 0.0)
        self._tokens = max(self._tokens - cost, -self.rate.burst)

    def give_back(self, now: float, amount: float) -> None:
        """Return ``amount`` taken for what cost less (an estimate paid first), up to a
        full bucket."""
        self.allow(now, 0.0)
        self._tokens = min(self._tokens + amount, self.rate.burst)

    def left(self, now: float) -> float:
        """What may be spent now (refilled to ``now`` first); nothing taken."""
        self.allow(now, 0.0)
        return self._tokens

    def spent(self, now: float) -> bool:
        """Whether nothing is left (refilled to ``now`` first)."""
        self.allow(now, 0.0)
        return self._tokens < 1.0

    def wait_s(self, now: float, cost: float = 1.0) -> float:
        """Seconds until ``cost`` is there (0: it is now; ``inf``: never, as for a cost
        past the burst); nothing taken."""
        self.allow(now, 0.0)
        missing = cost - self._tokens
        if missing <= 0:
            return 0.0
        if cost > self.rate.burst or self.rate.per_second <= 0:
            return math.inf
        return missing / self.rate.per_second


class AbuseCounter:
    """Counts refusals in a sliding window; past ``limit`` the client is cut off."""

    __slots__ = ("_times", "limit", "window_s")

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: tuple[float, ...] | list[float] = ()  # a list from the first refusal

    def refused(self, now: float) -> bool:
        """Record a refusal; True when the client has been refused too often."""
        times = [t for t in self._times if now - t < self.window_s]
        times.append(now)
        self._times = times
        return len(times) > self.limit


class Spend(StrEnum):
    """What a member's input costs the server, each kind with its own budget."""

    COMMANDS = "commands"  # JSON commands, counted (per member; sockets have their own)
    COMMAND_BYTES = "command_bytes"  # JSON commands' bytes, charged before they are parsed
    DOCUMENT_BYTES = "document_bytes"  # client document writes, refused or no-op: bytes
    AWARENESS_BYTES = "awareness_bytes"  # presence updates: bytes, fanned out to everyone
    SYNC_REQUESTS = "sync_requests"  # "send me everything" (sync step 1, query awareness)
    READ_BYTES = "read_bytes"  # large REST answers (the transcript): their bytes
    # Sockets opened, the session's and side-threads' (per member): each costs admission,
    # and a side-thread's may read its document from the store.
    SOCKET_OPENS = "socket_opens"
    SYNC_BYTES = "sync_bytes"  # answers to sync requests (the document): their bytes
    # Resends past the command rate, on a socket or over REST, each answered as it was the
    # first time (from the recent acks, the store or the node that runs the session).
    RESENDS = "resends"
    # A member's share of what their session's context previews may build and encode (the
    # session's budget is its own: ``server.runtime.room.Work``): bytes of work.
    PREVIEW_WORK = "preview_work"


@dataclass(frozen=True, slots=True)
class Cost:
    spend: Spend
    amount: int


def answer_bytes(parts: Iterable[str | bytes]) -> int:
    """The bytes of an answer's ``parts`` as sent (text as UTF-8): what a read of them
    spends of a ``READ_BYTES`` budget, whatever the path (REST, a socket's greeting). A
    character may be up to four (review RJ-2: a CJK answer charged its characters spent a
    third of its bytes)."""
    return sum(len(p) if isinstance(p, bytes) or p.isascii() else len(p.encode()) for p in parts)


def cost_of(message: ClientMessage, frame_bytes: int) -> Cost:
    """What a decoded binary frame costs: a request for state is counted (its answer may be
    the whole document, whatever the frame's size); anything else costs its bytes."""
    if isinstance(message, SyncMessage):
        if message.sync_type is SyncType.STEP1:
            return Cost(Spend.SYNC_REQUESTS, 1)
        return Cost(Spend.DOCUMENT_BYTES, frame_bytes)
    if isinstance(message, AwarenessMessage):
        return Cost(Spend.AWARENESS_BYTES, frame_bytes)
    return Cost(Spend.SYNC_REQUESTS, 1)  # query awareness: every present state


class Budgets:
    """Token buckets by owner (a member, or a socket) and kind of spend, made on first use.
    A spend without a rate here is not budgeted at this level."""

    __slots__ = ("_buckets", "rates")

    def __init__(self, rates: dict[Spend, Rate]) -> None:
        self.rates = rates
        self._buckets: dict[tuple[object, Spend], TokenBucket] = {}

    def bucket(self, owner: object, spend: Spend, now: float) -> TokenBucket:
        key = (owner, spend)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rates[spend], now)
        return bucket

    def allow(self, owner: object, cost: Cost, now: float) -> bool:
        if cost.spend not in self.rates:
            return True
        return self.bucket(owner, cost.spend, now).allow(now, cost.amount)

    def spend(self, owner: object, cost: Cost, now: float) -> None:
        """Charge what was already done (``TokenBucket.spend``)."""
        if cost.spend in self.rates:
            self.bucket(owner, cost.spend, now).spend(now, cost.amount)

    def give_back(self, owner: object, cost: Cost, now: float) -> None:
        """Return what was taken for what cost less (``TokenBucket.give_back``)."""
        if cost.spend in self.rates:
            self.bucket(owner, cost.spend, now).give_back(now, cost.amount)

    def spent(self, owner: object, spend: Spend, now: float) -> bool:
        """Whether ``owner`` has nothing left of ``spend`` (never, without a rate)."""
        return spend in self.rates and self.bucket(owner, spend, now).spent(now)

    def wait_s(self, owner: object, spend: Spend, now: float, amount: float = 1.0) -> float:
        """Seconds until ``owner`` has ``amount`` of ``spend`` again (0: now, or no rate)."""
        if spend not in self.rates:
            return 0.0
        return self.bucket(owner, spend, now).wait_s(now, amount)


class KeyedBuckets:
    """One ``TokenBucket`` of ``rate`` per key, for callers with no member to charge (a
    client's address, an invite). At most ``max_keys`` are kept: past it the one used
    least lately is forgotten (by then refilled, as good as new, unless ``max_keys``
    keys are being spent at once)."""

    __slots__ = ("_buckets", "max_keys", "rate")

    def __init__(self, rate: Rate, max_keys: int) -> None:
        self.rate = rate
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        """Spend one of ``key``'s budget: 0.0 when it was there, else the seconds until
        it will be (nothing spent)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return 0.0 if bucket.allow(now) else bucket.wait_s(now)

    def wait_s(self, key: str, now: float) -> float:
        """Seconds until one of ``key``'s budget is there (0.0: it is now); nothing spent,
        nothing kept (a key not kept has its whole budget)."""
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.wait_s(now)

    def __len__(self) -> int:
        return len(self._buckets)


def command_bytes_refusal(
    budgets: Budgets, owner: object, size: int, now: float
) -> ParleyError | None:
    """Charge ``owner`` a command's ``size`` bytes before it is parsed (parsing is what its
    bytes cost): None when they were, else why not: ``too_large`` past the budget's burst
    (it could never pass; review), ``rate_limited`` otherwise."""
    if budgets.allow(owner, Cost(Spend.COMMAND_BYTES, size), now):
        return None
    rate = budgets.rates.get(Spend.COMMAND_BYTES)
    if rate is not None and size > rate.burst:
        return TooLarge(f"a command is at most {int(rate.burst)} bytes")
    wait = budgets.bucket(owner, Spend.COMMAND_BYTES, now).wait_s(now, size)
    return RateLimited("over the command bytes budget; slow down", wait)
