"""Count limits under concurrent requests (review: all ten creations of a subscription at
once were accepted past the cap, and documents passed theirs): each cap is counted under
a lock, so concurrent requests take it in turn, on either database."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import make_settings, serve_in_process
from tests.fake_model import FakeModel


async def test_concurrent_creations_stop_at_their_caps(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(
        database_url,
        tmp_path / "d",
        max_webhooks=3,
        max_documents_per_session=3,
        webhook_allow_private=True,
    )
    async with serve_in_process(settings, FakeModel.answering("ok")) as server:
        hooks = await asyncio.gather(
            *(
                server.http.post(
                    "/api/v1/webhooks",
                    json={"url": f"http://127.0.0.1:9/{n}", "events": ["reply.completed"]},
                )
                for n in range(10)
            )
        )
        assert sorted(h.status_code for h in hooks) == [201] * 3 + [409] * 7
        assert len((await server.http.get("/api/v1/webhooks")).json()["webhooks"]) == 3
        sid = await server.new_session({"olga": "owner"})
        documents = f"/api/v1/sessions/{sid}/documents"
        added = await asyncio.gather(
            *(
                server.http.post(
                    documents,
                    json={"title": f"d{n}", "text": "x", "readers": {"users": ["olga"]}},
                )
                for n in range(10)
            )
        )
        assert sorted(a.status_code for a in added) == [201] * 3 + [409] * 7
        assert len((await server.http.get(documents)).json()["documents"]) == 3
