"""The final-closes budget (``server.ws.final_closes``) as a pure object: scopes in,
decisions out, a clock of our own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parley.server.ws.final_closes import MAX_KEYS, FinalCloses
from tests.conftest import make_settings


def closes(tmp_path: Path, **overrides: Any) -> FinalCloses:
    settings = make_settings(
        "sqlite://",
        tmp_path,
        final_closes_per_minute=0.01,
        final_closes_burst=2,
        final_closes_per_address_per_minute=0.01,
        final_closes_per_address_burst=5,
        **overrides,
    )
    return FinalCloses(settings)


def upgrade(token: str, address: str = "203.0.113.7") -> dict[str, Any]:
    return {
        "type": "websocket",
        "path": "/ws/sessions/s1",
        "query_string": f"token={token}".encode(),
        "headers": [(b"origin", b"http://localhost:8765")],
        "client": (address, 50_000),
    }


def test_one_address_cycling_through_bad_tokens_is_held_to_its_own_budget(
    tmp_path: Path,
) -> None:
    """Every new token was a new request with a budget of its own: one address cycling
    through them was accepted and closed as often as it liked. Past the address's budget
    the upgrade is refused (nothing kept of it but what it spent)."""
    budget = closes(tmp_path)
    assert [budget.allow(upgrade(f"bad-{n}"), 0.0) for n in range(7)] == [True] * 5 + [False] * 2
    assert budget.allow(upgrade("bad-0", "198.51.100.9"), 0.0)  # another address: its own


def test_the_same_request_from_another_address_has_a_budget_of_its_own(tmp_path: Path) -> None:
    """Clients sending exactly the same request (one token, y-websocket 1.x beside 3.x)
    shared one budget: the 1.x ones spent it, and the 3.x one, which stops at a final
    close, was refused at the upgrade and retried. From another address it is another
    request (on one address they still share it)."""
    budget = closes(tmp_path)
    assert [budget.allow(upgrade("shared"), 0.0) for _ in range(3)] == [True, True, False]
    assert budget.allow(upgrade("shared", "198.51.100.9"), 0.0)


def test_a_refused_upgrade_spends_nothing(tmp_path: Path) -> None:
    """Refused by one budget, the upgrade spends none of the other: a request past its
    own budget does not use up its address's."""
    budget = closes(tmp_path)
    assert [budget.allow(upgrade("again"), 0.0) for _ in range(10)] == [True] * 2 + [False] * 8
    assert [budget.allow(upgrade(f"other-{n}"), 0.0) for n in range(4)] == [True] * 3 + [False]


def test_the_budgets_kept_are_bounded(tmp_path: Path) -> None:
    budget = closes(tmp_path)
    for n in range(MAX_KEYS + 50):
        budget.allow(upgrade("t", f"10.0.{n // 256}.{n % 256}"), 0.0)
    assert len(budget) <= 2 * MAX_KEYS
