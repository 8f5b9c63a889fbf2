"""``bench.sse_resume`` at a tiny size: every subscriber is cut once and resumes whole."""

from __future__ import annotations

from pathlib import Path

from bench.sse_resume import free_port, measure, spawn_server


async def test_every_subscriber_resumes_with_the_whole_reply(tmp_path: Path) -> None:
    server = spawn_server(tmp_path, free_port(), subscribers=4, token_delay_ms=20)
    try:
        result = await measure(server, subscribers=4, token_delay_ms=20)
    finally:
        server.stop()
    assert result["problems"] == []
    assert result["whole_text_no_gap_no_duplicate"] == 4
    assert result["cut_mid_reply"] + result["ended_before_cut"] == 4
    assert result["reply_chars"] > 0 and result["elapsed_s"] > 0
