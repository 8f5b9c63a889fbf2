"""Which due webhook deliveries take the sender's free slots: fairly across subscriptions.

The sender has a few attempts in flight at once (``PARLEY_WEBHOOK_CONCURRENCY``). Taken
oldest first, a receiver that never answers held every slot for the whole timeout, again
and again at each retry: with 40 dead subscriptions a healthy receiver's deliveries came
about two minutes late (review, "bounded"). Here, sans I/O:

- subscriptions are served in three classes, each before the next: those proven (their
  last ``CLEAN_AFTER`` attempts succeeded, in this process: ``Standing``), the others not
  known to fail, and those
  failing (``FAILING_AFTER`` or more attempts failed in a row: ``webhooks.failures``).
  Within a class, the oldest due delivery first, of the oldest due the claim reads;
- a proven subscription holds at most ``per_subscription`` slots while others wait (and
  any slots left over: a lone subscription is not held back), any other one slot, and
  the failing together at most ``failing`` slots: a dead receiver costs its one slot,
  never the slots of the others.

The sender also stops counting an attempt against its slots once it has waited
``SLOW_AFTER_S`` for an answer (up to ``SLOW_PER_SLOT`` such attempts a slot,
``free_slots``): receivers not known yet that turn out dead then hold those, not the slots
the next deliveries need (``WebhookSender``). A dead receiver's attempts fail at the
timeout, and after ``FAILING_AFTER`` of them it is failing (its failures are stored: it
stays failing after a restart, until an attempt succeeds).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

PROVEN, UNKNOWN, FAILING = 0, 1, 2
# Attempts failed in a row after which a subscription is served as failing: a receiver
# that answered an error once or twice (a deploy, a blip) is not put behind the dead.
FAILING_AFTER = 3
# An attempt with no answer this long stops counting against the sender's slots.
SLOW_AFTER_S = 2.0


class Due(Protocol):
    @property
    def webhook_id(self) -> str: ...

    @property
    def failing(self) -> bool: ...


D = TypeVar("D", bound=Due)


@dataclass(frozen=True, slots=True)
class Lanes:
    """The sender's attempts in flight, and its caps (see the module)."""

    per_subscription: int
    failing: int
    in_flight: Mapping[str, int] = field(default_factory=dict)  # webhook id -> attempts
    failing_ids: frozenset[str] = frozenset()  # of those, the failing subscriptions
    proven: frozenset[str] = frozenset()
    # Subscriptions an attempt of which failed lately (``Standing.owed``).
    owed: frozenset[str] = frozenset()
    # Only subscriptions in good standing (none of their attempts failed lately: proven,
    # or not tried yet) may take a slot: the slots kept for them (``reserved``).
    clean_only: bool = False

    @classmethod
    def of(
        cls,
        concurrency: int,
        in_flight: Mapping[str, int],
        failing_ids: frozenset[str],
        proven: frozenset[str],
        owed: frozenset[str] = frozenset(),
    ) -> Lanes:
        """A quarter of ``concurrency`` slots for one proven subscription, a quarter for
        the failing together."""
        share = max(1, concurrency // 4)
        return cls(share, share, in_flight, failing_ids, proven, owed)

    def clean(self, webhook_id: str, failing: bool) -> bool:
        """In good standing: no attempt of it failed lately (proven, or not tried yet)."""
        return not failing and webhook_id not in self.owed and webhook_id not in self.failing_ids

    def cap(self, webhook_id: str, failing: bool) -> int:
        """Slots one subscription may hold while others wait: a share if proven, else one."""
        return self.per_subscription if self.rank(webhook_id, failing) == PROVEN else 1

    @property
    def full(self) -> frozenset[str]:
        """The subscriptions that may take no slot now: those not proven, holding one (a
        proven one may take the slots others leave)."""
        return frozenset(
            w
            for w, n in self.in_flight.items()
            if n >= 1 and self.rank(w, w in self.failing_ids) != PROVEN
        )

    @property
    def reserved(self) -> int:
        """Slots kept for subscriptions in good standing when the others hold every slot
        (review: 99 receivers hanging every other attempt filled them all, and a healthy
        one waited 8 s at each delivery): a share, less their attempts in flight."""
        held = sum(n for w, n in self.in_flight.items() if self.clean(w, False))
        return max(0, self.per_subscription - held)

    @property
    def failing_in_flight(self) -> int:
        return sum(n for w, n in self.in_flight.items() if w in self.failing_ids)

    @property
    def failing_full(self) -> bool:
        return self.failing_in_flight >= self.failing

    def rank(self, webhook_id: str, failing: bool) -> int:
        if failing:
            return FAILING
        return PROVEN if webhook_id in self.proven else UNKNOWN


def pick(due: Iterable[D], lanes: Lanes, limit: int) -> list[D]:
    """Of ``due`` (oldest first), what takes the ``limit`` free slots, in the order to
    send: by class within each one's cap, then the slots left to proven subscriptions."""
    candidates = list(due)
    ranked = sorted(
        range(len(candidates)),
        key=lambda i: (lanes.rank(candidates[i].webhook_id, candidates[i].failing), i),
    )
    if lanes.clean_only:
        ranked = [i for i in ranked if lanes.clean(candidates[i].webhook_id, candidates[i].failing)]
    taken: list[int] = []
    counts = Counter(lanes.in_flight)
    failing = lanes.failing_in_flight
    for index in ranked:
        if len(taken) >= limit:
            break
        delivery = candidates[index]
        webhook_id = delivery.webhook_id
        if counts[webhook_id] >= lanes.cap(webhook_id, delivery.failing):
            continue
        if delivery.failing:
            if failing >= lanes.failing:
                continue
            failing += 1
        counts[webhook_id] += 1
        taken.append(index)
    chosen = set(taken)
    for index in ranked:  # the slots nobody else wanted, to the proven
        if len(taken) >= limit:
            break
        delivery = candidates[index]
        if index not in chosen and lanes.rank(delivery.webhook_id, delivery.failing) == PROVEN:
            taken.append(index)
    return [candidates[i] for i in taken]


# Attempts that must succeed in a row after one failed before a subscription is proven
# again: one that fails every other time (review: 99 such held a healthy receiver 8 s
# back) stays served one slot at a time, behind the proven.
CLEAN_AFTER = 4


class Standing:
    """Which subscriptions are proven (``Lanes.proven``): their last attempts succeeded,
    ``CLEAN_AFTER`` in a row since any failed. At most ``max_kept`` of each kind are
    remembered, the oldest forgotten first (a forgotten one is not known yet)."""

    def __init__(self, max_kept: int) -> None:
        self.max_kept = max_kept
        self._proven: dict[str, None] = {}
        self._owed: dict[str, int] = {}  # successes still owed since a failure

    @property
    def proven(self) -> frozenset[str]:
        return frozenset(self._proven)

    @property
    def owed(self) -> frozenset[str]:
        """Those an attempt of which failed lately (not proven again yet)."""
        return frozenset(self._owed)

    def record(self, webhook_id: str, ok: bool) -> None:
        self._proven.pop(webhook_id, None)
        owed = self._owed.pop(webhook_id, 0)
        if not ok:
            self._keep(self._owed, webhook_id, CLEAN_AFTER)
        elif owed > 1:
            self._keep(self._owed, webhook_id, owed - 1)
        else:
            self._keep(self._proven, webhook_id, None)

    def _keep(self, kept: dict[str, _V], webhook_id: str, value: _V) -> None:
        kept[webhook_id] = value
        if len(kept) > self.max_kept:
            del kept[next(iter(kept))]


_V = TypeVar("_V")

# Attempts past ``SLOW_AFTER_S`` that stop counting against the slots, per slot.
SLOW_PER_SLOT = 4


def free_slots(concurrency: int, started: Iterable[float], now: float) -> int:
    """Slots free for new attempts, given when the ones in flight started: an attempt
    waiting ``SLOW_AFTER_S`` or longer counts only past ``SLOW_PER_SLOT * concurrency``
    of them (so at most ``(1 + SLOW_PER_SLOT) * concurrency`` are ever in flight)."""
    times = list(started)
    slow = sum(1 for t in times if now - t >= SLOW_AFTER_S)
    fresh = len(times) - slow
    return max(0, concurrency - fresh - max(0, slow - SLOW_PER_SLOT * concurrency))
