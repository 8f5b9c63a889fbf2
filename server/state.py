"""What the app's endpoints share: settings, store, keys, loaded rooms, clock, send budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from parley.server.keys import Keys
from parley.server.metrics import Metrics
from parley.server.runtime.rooms import RoomRegistry
from parley.server.settings import Settings
from parley.server.store.sessions import Store
from parley.server.ws.send_budget import SendBudget


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
