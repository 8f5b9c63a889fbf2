"""What the app's endpoints share: settings, store, keys, loaded rooms, clock, send budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from server.keys import Keys
from server.metrics import Metrics
from server.rooms import RoomRegistry
from server.send_budget import SendBudget
from server.settings import Settings
from server.store import Store


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
