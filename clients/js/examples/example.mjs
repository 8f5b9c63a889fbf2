// Join a session, prompt twice, watch the first reply stream, cancel the second while it
// waits. Usage: node example.mjs ws://127.0.0.1:8765 <session id> <client token>
// Prints one JSON line per step, and a summary last.
import WebSocket from 'ws'
import { connect, ParleyError } from '@parley/client'

const [url, sessionId, token] = process.argv.slice(2)
const session = connect({ url, sessionId, token, WebSocketPolyfill: WebSocket, name: 'example' })
const say = (step, fields) => console.log(JSON.stringify({ step, ...fields }))

await session.ready()
say('synced', { state: session.state })

// Resolves once test() holds, looked at again on each change of `event`.
const until = (event, test) => new Promise((resolve) => {
  if (test()) return resolve()
  const off = session.on(event, () => test() && (off(), resolve()))
})

const first = await session.prompt('What changed in the last deploy?')
await until('queue', () => !session.queue.some((item) => item.id === first.prompt_id))
const second = await session.prompt('And who approved it?')
const waiting = session.queue.find((item) => item.id === second.prompt_id)
say('queued', { position: waiting?.position ?? null, queue: session.queue })

const cancelled = await session.cancel(second.prompt_id)
say('cancelled', { prompt_id: cancelled.prompt_id })

// The reply to the first prompt, as it streams in.
const lengths = new Set()
const answer = () => session.entry(session.entry(first.prompt_id)?.reply_id ?? '')
await until('transcript', () => {
  const now = answer()
  if (now !== undefined) lengths.add(now.content.length)
  return now !== undefined && now.status !== 'streaming'
})
const reply = answer()
say('reply', { status: reply.status, content: reply.content, lengths_seen: lengths.size })

// Errors are typed: an unknown prompt cannot be cancelled.
const refused = await session.cancel('no-such-prompt').catch((error) => error)
say('refused', { is_parley_error: refused instanceof ParleyError, code: refused.code })

say('summary', {
  transcript: session.transcript.map(({ id, kind, author, status, reason_code, content }) => (
    { id, kind, author, status, reason_code: reason_code ?? null, content }
  ))
})
session.close()
