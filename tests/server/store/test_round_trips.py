"""Round trips to PostgreSQL per acknowledged prompt: counted (``bench.ack_round_trips``),
never timed. The ack's transaction is BEGIN, the entry (a resent command id found here,
before the document changes), one statement for the document update, the counters and
the events, and COMMIT; a cluster node adds its lease's fence (first) and the update's
notification. A prompt whose run starts with it adds the start's two statements."""

from __future__ import annotations

import pytest

from bench.ack_round_trips import count
from tests.conftest import postgres_database

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize(("fenced", "most"), [(False, 4), (True, 6)])
async def test_an_acked_prompt_costs_four_round_trips_on_postgresql_six_on_a_cluster(
    fenced: bool, most: int
) -> None:
    async with postgres_database(migrated=True) as url:
        counted = await count(url, prompts=3, fenced=fenced)
    for trips in counted:
        assert len(trips) <= most, trips.calls


async def test_a_prompt_and_the_start_of_its_run_cost_six_round_trips_together() -> None:
    """With the session's runner idle, the ack's write starts the run too: the quotas the
    core judges the start by, and the prompt's row marked running, are the two more."""
    async with postgres_database(migrated=True) as url:
        counted = await count(url, prompts=3, runner=True)
    for trips in counted:
        assert len(trips) <= 6, trips.calls
