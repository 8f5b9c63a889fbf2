"""Stock Yjs (npm ``yjs``) reads a reply written in blocks (``yitems.TEXT_BLOCK_UNITS``)
as pycrdt does: every transaction's update applied in order, its text events taken, and
its own encoding of the result read back by pycrdt."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from pycrdt import Doc

from parley.session.schema import SessionDocument
from tests.stock_client import JS_DIR, ensure_node_modules

pytestmark = pytest.mark.node

# Reads JSON {"updates": [hex...]} on stdin; prints each reply's text as Yjs holds it, the
# text its events described (deltas applied in order), and its whole state, encoded.
_SCRIPT = r"""
import * as Y from 'yjs'
let input = ''
for await (const chunk of process.stdin) input += chunk
const doc = new Y.Doc()
const seen = {}
doc.getArray('transcript').observeDeep(events => {
  for (const event of events) {
    if (!(event.target instanceof Y.Text)) continue
    const id = event.target.parent.get('id')
    let text = seen[id] ?? '', at = 0, out = ''
    for (const op of event.delta) {
      if (op.retain) { out += text.slice(at, at + op.retain); at += op.retain }
      else if (op.delete) at += op.delete
      else if (typeof op.insert === 'string') out += op.insert
    }
    seen[id] = out + text.slice(at)
  }
})
for (const hex of JSON.parse(input).updates) Y.applyUpdate(doc, Buffer.from(hex, 'hex'))
const texts = {}
for (const entry of doc.getArray('transcript')) {
  texts[entry.get('id')] = entry.get('content').toString()
}
const state = Buffer.from(Y.encodeStateAsUpdate(doc)).toString('hex')
console.log(JSON.stringify({ texts, seen, state }))
"""


def _yjs(updates: list[bytes]) -> dict[str, Any]:
    ensure_node_modules()
    result = subprocess.run(
        ["node", "--input-type=module", "-e", _SCRIPT],
        input=json.dumps({"updates": [u.hex() for u in updates]}),
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out: dict[str, Any] = json.loads(result.stdout)
    return out


@pytest.mark.parametrize("encode_from", [0, 10**9])
def test_yjs_reads_a_reply_written_in_blocks(encode_from: int) -> None:
    doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    document = SessionDocument(doc, encode_from=encode_from, text_block_units=12)
    document.add_prompt(id="p", seq=1, author="u", text="go", created_at=1)
    document.start_reply(prompt_ids=["p"], reply_id="r", author="bot", created_at=2)
    pieces = ["tok ", "é😀 ", "𝄞", "longer piece of text ", "x"] * 12
    for piece in pieces:
        document.append_reply_text("r", piece)
    document.finish_prompts(["p"])
    expected = "".join(pieces)
    yjs = _yjs(updates)
    assert yjs["texts"]["r"] == expected
    assert yjs["seen"]["r"] == expected  # its events told the text as it grew
    back = Doc()
    back.apply_update(bytes.fromhex(yjs["state"]))
    assert SessionDocument(back).entry("r").content == expected
    assert back.get_state() == doc.get_state()
