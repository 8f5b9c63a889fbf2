"""``parley serve``'s WebSocket protocol: uvicorn's sans-I/O one with a mailbox and a flag in
place of its ``asyncio.Queue`` and ``asyncio.Event``, and the handshake let go of (that
``parley serve`` runs it: ``test_send_path.test_parley_serve_writes_frames_directly``)."""

from __future__ import annotations

import asyncio

import pytest

from parley.server.ws.uvicorn_protocol import Flag, Mailbox


async def test_the_mailbox_gives_messages_in_order_and_wakes_its_reader() -> None:
    mailbox = Mailbox()
    mailbox.put_nowait("a")
    assert await mailbox.get() == "a" and mailbox.empty()
    reader = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0)
    assert not reader.done()
    mailbox.put_nowait("b")
    mailbox.put_nowait("c")
    assert await reader == "b"
    assert mailbox.qsize() == 1 and await mailbox.get() == "c"


async def test_a_cancelled_read_loses_nothing_and_a_second_reader_is_refused() -> None:
    mailbox = Mailbox()
    reader = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one reader"):
        await mailbox.get()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    mailbox.put_nowait("kept")
    assert await mailbox.get() == "kept"


async def test_the_flag_holds_writers_while_cleared_and_releases_them_all() -> None:
    flag = Flag()
    await flag.wait()  # set from the start: writing is allowed
    flag.clear()
    writers = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    writers[0].cancel()  # one writer gone does not strand the others
    await asyncio.sleep(0)
    assert not any(w.done() for w in writers[1:])
    flag.set()
    await asyncio.gather(*writers[1:])
    assert flag.is_set() and writers[0].cancelled()
