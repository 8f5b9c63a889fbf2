"""What the app's endpoints share: settings, store, keys, loaded rooms, clock, send budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from parley.server.http.invite_limits import ExchangeLimits
from parley.server.http.single_flight import SingleFlight
from parley.server.keys import Keys
from parley.server.metrics import Metrics
from parley.server.runtime.rooms import RoomRegistry
from parley.server.settings import Settings
from parley.server.store.sessions import Store
from parley.server.ws.client_writes import RefusedWrites
from parley.server.ws.final_closes import FinalCloses
from parley.server.ws.send_budget import SendBudget

if TYPE_CHECKING:
    from parley.server.http.member_list import MemberListBody
    from parley.server.http.models import Readiness
    from parley.server.http.transcript_body import TranscriptBody
    from parley.server.runtime.room import SessionRoom


@dataclass(slots=True)
class AppState:
    settings: Settings
    store: Store
    keys: Keys
    rooms: RoomRegistry
    clock: Callable[[], float]
    send_budget: SendBudget
    metrics: Metrics = field(default_factory=Metrics)
    draining: bool = False
    # Each loaded room's transcript as ``GET …/transcript`` answers it (gone with the room).
    transcripts: WeakKeyDictionary[SessionRoom, TranscriptBody] = field(
        default_factory=WeakKeyDictionary
    )
    # Each loaded room's member list as ``GET …/members`` answers it (gone with the room).
    member_lists: WeakKeyDictionary[SessionRoom, MemberListBody] = field(
        default_factory=WeakKeyDictionary
    )
    # The bytes of each member's last list of a loaded room's documents (``GET
    # …/documents``), and the most it could have been: what their next list is charged
    # before it is made, with what was added since (gone with the room).
    document_lists: WeakKeyDictionary[SessionRoom, dict[str, tuple[int, int]]] = field(
        default_factory=WeakKeyDictionary
    )
    # ``/readyz``'s probe, one at a time: callers who ask while it runs share its answer.
    readiness: SingleFlight[Readiness] = field(default_factory=SingleFlight)
    # The invite exchange's budgets, by client address and by invite (it needs no key).
    exchanges: ExchangeLimits = field(init=False)
    # How often the same upgrade may be accepted only to be closed for good (44xx).
    final_closes: FinalCloses = field(init=False)
    # The document writes clients sent, dropped: counted, and logged at a bounded rate.
    refused_writes: RefusedWrites = field(init=False)

    def __post_init__(self) -> None:
        self.exchanges = ExchangeLimits(self.settings)
        self.final_closes = FinalCloses(self.settings)
        self.refused_writes = RefusedWrites(
            self.metrics.client_writes, self.settings.client_write_log_every_s, self.clock
        )
