// A stock, unmodified Yjs + y-websocket client, driven over a line protocol so
// that pytest can act as a real browser user would.
//
// Usage:
//   node stock_client.mjs --url ws://127.0.0.1:PORT/ws/sessions --room SESSION_ID \
//        --token TOKEN [--name NAME]
//   (a side-thread's document: --url ws://127.0.0.1:PORT/ws/sessions/SESSION_ID/threads
//    --room THREAD_ID; "dump" reports its "thread" and "turns" roots)
//
// stdout carries exactly one JSON object per line (events and replies); all
// diagnostics from the libraries go to stderr. stdin carries one JSON command
// per line; every command is answered by exactly one
// {"event":"reply","cmd":...} line. EOF on stdin behaves like {"cmd":"quit"}.
//
// The client never writes to the socket itself: everything on the wire is
// produced by the stock WebsocketProvider (binary y-websocket frames), except
// with --commands, where {"cmd":"command","payload":{...}} sends one Parley
// command frame on the provider's socket and its replies come back as
// {"event":"command-reply","reply":{...}} through provider.messageHandlers.

import { parseArgs } from 'node:util'
import { createInterface } from 'node:readline'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'

// Parley's command channel: binary frames of this y-websocket message type carry a JSON
// command one way and its reply (or a later error or event) the other.
const messageCommand = 100

/** @param {Record<string, unknown>} obj */
const emit = (obj) => {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

/**
 * @param {string} where
 * @param {unknown} err
 */
const fatal = (where, err) => {
  const e = /** @type {any} */ (err)
  emit({
    event: 'fatal',
    where,
    error: e instanceof Error ? e.message : String(e),
    stack: e instanceof Error ? e.stack : undefined
  })
  process.exit(1)
}

process.on('uncaughtException', (err) => fatal('uncaughtException', err))
process.on('unhandledRejection', (err) => fatal('unhandledRejection', err))

// Keep stdout clean for the line protocol, whatever a library might log.
console.log = (...args) => console.error(...args)
console.info = (...args) => console.error(...args)

let args
try {
  args = parseArgs({
    options: {
      url: { type: 'string' },
      room: { type: 'string' },
      token: { type: 'string' },
      name: { type: 'string', default: 'stock' },
      commands: { type: 'boolean', default: false }
    },
    strict: true,
    allowPositionals: false
  }).values
} catch (err) {
  fatal('args', err)
}
if (!args.url || !args.room || args.token === undefined) {
  fatal('args', new Error('--url, --room and --token are required'))
}

const doc = new Y.Doc()
const transcript = doc.getArray('transcript')
const queue = doc.getArray('queue')
// A side-thread's document (its socket: --url .../threads --room THREAD_ID).
const thread = doc.getMap('thread')
const turns = doc.getArray('turns')

/**
 * For every assistant entry: the set of distinct lengths its content Y.Text
 * has had, as observed after each applied transaction.
 * @type {Map<string, Set<number>>}
 */
const replyLengths = new Map()

/** @param {Y.Array<unknown>} entries */
const recordReplyLengths = (entries) => {
  const n = entries.length
  for (let i = 0; i < n; i++) {
    const entry = entries.get(i)
    if (!(entry instanceof Y.Map)) continue
    if (entry.get('role') !== 'assistant') continue
    const content = entry.get('content')
    if (!(content instanceof Y.Text)) continue
    const rawId = entry.get('id')
    const key = typeof rawId === 'string' || typeof rawId === 'number' ? String(rawId) : `#${i}`
    let seen = replyLengths.get(key)
    if (seen === undefined) {
      seen = new Set()
      replyLengths.set(key, seen)
    }
    seen.add(content.length)
  }
}
transcript.observeDeep(() => recordReplyLengths(transcript))
turns.observeDeep(() => recordReplyLengths(turns))

const provider = new WebsocketProvider(args.url, args.room, doc, {
  WebSocketPolyfill: /** @type {any} */ (WebSocket),
  // With --commands, opened as the websocket page shows: told to send it JSON from the
  // start of every connection, not only once it sent a command on it (review RH-4).
  params: args.commands ? { token: args.token, commands: 'binary' } : { token: args.token },
  connect: true
})

// The one extension a Parley client adds to a stock provider: a handler for its message
// type. Registered only with --commands, so the plain client stays exactly stock.
if (args.commands) {
  provider.messageHandlers[messageCommand] = (_encoder, decoder) => {
    emit({ event: 'command-reply', reply: JSON.parse(decoding.readVarString(decoder)) })
  }
}

/** @param {unknown} payload */
const sendCommand = (payload) => {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, messageCommand)
  encoding.writeVarString(encoder, JSON.stringify(payload))
  const ws = /** @type {any} */ (provider.ws)
  if (!ws || ws.readyState !== WebSocket.OPEN) return { event: 'reply', cmd: 'command', sent: false }
  ws.send(encoding.toUint8Array(encoder))
  return { event: 'reply', cmd: 'command', sent: true }
}

// The size of every frame the current socket received (read beside the provider, which
// it leaves as it is): a test checks how a sync answer was cut.
/** @type {number[]} */
let frameSizes = []
provider.on('status', (/** @type {{status: string}} */ ev) => {
  if (ev.status === 'connected' && provider.ws) {
    frameSizes = []
    provider.ws.addEventListener('message', (/** @type {any} */ m) => {
      frameSizes.push(typeof m.data === 'string' ? m.data.length : m.data.byteLength)
    })
  }
  emit({ event: 'status', status: ev.status })
})
provider.on('sync', (/** @type {boolean} */ synced) => {
  // What the document holds the moment the provider counts itself synced (an app reads
  // it then, in this handler), and the frames received before the one being applied.
  emit({
    event: 'sync',
    synced,
    transcript: transcript.length,
    meta: doc.getMap('meta').toJSON(),
    frame_sizes: frameSizes.slice()
  })
})
provider.on('connection-close', (/** @type {any} */ ev) => {
  if (ev == null) {
    // closed locally (provider.disconnect()/destroy() or the idle watchdog)
    emit({ event: 'connection-close', code: null, reason: null, local: true })
  } else {
    emit({
      event: 'connection-close',
      code: typeof ev.code === 'number' ? ev.code : null,
      reason: typeof ev.reason === 'string' ? ev.reason : String(ev.reason ?? ''),
      local: false
    })
  }
})
provider.on('connection-error', (/** @type {any} */ ev) => {
  const msg = ev && ev.message ? String(ev.message) : (ev && ev.error ? String(ev.error) : 'error')
  emit({ event: 'connection-error', message: msg })
})
// y-websocket >= 3.1: emitted when the server closed with a code for which
// the provider gives up reconnecting (by default 4400-4499).
provider.on('closed', (/** @type {{code: number, reason: string}} */ ev) => {
  emit({ event: 'closed', code: ev.code, reason: ev.reason })
})

// With connect: true the provider already emitted its first
// {status: 'connecting'} inside the constructor, before any listener could be
// attached; report that state now so the event stream is complete.
if (provider.wsconnecting) emit({ event: 'status', status: 'connecting' })

provider.awareness.setLocalState({ user: { name: args.name }, typing: false })

const dump = () => {
  /** @type {Record<string, number>} */
  const lengths = {}
  for (const [id, seen] of replyLengths) lengths[id] = seen.size
  return {
    event: 'reply',
    cmd: 'dump',
    transcript: transcript.toJSON(),
    queue: queue.toJSON(),
    thread: thread.toJSON(),
    turns: turns.toJSON(),
    awareness: Array.from(provider.awareness.getStates().entries()).map(
      ([clientID, state]) => ({ clientID, state })
    ),
    reply_lengths_seen: lengths,
    frame_sizes: frameSizes.slice()
  }
}

const attemptWrites = () => {
  // Targets are the entries that existed before this command, so the forged
  // entry from (a) is not itself the target of (b)-(d).
  const existing = transcript.length
  const first = existing > 0 ? transcript.get(0) : undefined
  // (a) forge a user entry
  doc.transact(() => {
    const forged = new Y.Map()
    forged.set('id', 'forged')
    forged.set('role', 'user')
    forged.set('author', 'mallory')
    forged.set('status', 'done')
    forged.set('content', new Y.Text('forged'))
    transcript.push([forged])
  })
  // (b) rewrite the status of the first entry
  doc.transact(() => {
    if (first instanceof Y.Map) first.set('status', 'hacked')
  })
  // (c) edit the text of the first entry
  doc.transact(() => {
    if (first instanceof Y.Map) {
      const content = first.get('content')
      if (content instanceof Y.Text) content.insert(0, 'HACK')
    }
  })
  // (d) delete the last (pre-existing) entry
  doc.transact(() => {
    if (existing > 0) {
      const idx = existing - 1
      if (idx < transcript.length) transcript.delete(idx, 1)
    }
  })
  return { event: 'reply', cmd: 'write', attempted: 4, existing_entries: existing }
}

// An app typing into the shared doc (an editor bound to the first entry's text): one
// character a transaction, so one update frame each, as a user's keystrokes are sent.
/** @param {number} count */
const typeInto = (count) => {
  const first = transcript.length > 0 ? transcript.get(0) : undefined
  const content = first instanceof Y.Map ? first.get('content') : undefined
  if (!(content instanceof Y.Text)) return { event: 'reply', cmd: 'type', typed: 0 }
  for (let i = 0; i < count; i++) doc.transact(() => content.insert(0, 'k'))
  return { event: 'reply', cmd: 'type', typed: count }
}

let quitting = false

const quit = async () => {
  if (quitting) return
  quitting = true
  const ws = /** @type {any} */ (provider.ws)
  /** @type {Promise<void>} */
  let closed = Promise.resolve()
  if (ws && typeof ws.once === 'function' && ws.readyState !== WebSocket.CLOSED) {
    closed = new Promise((resolve) => {
      ws.once('close', () => resolve())
      setTimeout(resolve, 1000).unref()
    })
  }
  provider.destroy()
  doc.destroy()
  await closed
  emit({ event: 'reply', cmd: 'quit' })
  process.exit(0)
}

/** @param {string} line */
const handle = (line) => {
  const text = line.trim()
  if (text === '') return
  let msg
  try {
    msg = JSON.parse(text)
  } catch (err) {
    emit({ event: 'reply', cmd: null, error: `invalid JSON: ${String(err)}` })
    return
  }
  const cmd = msg && typeof msg === 'object' ? msg.cmd : undefined
  switch (cmd) {
    case 'dump':
      emit(dump())
      return
    case 'write':
      emit(attemptWrites())
      return
    case 'type':
      emit(typeInto(Number(msg.count)))
      return
    case 'command':
      emit(sendCommand(msg.payload))
      return
    case 'typing':
      provider.awareness.setLocalStateField('typing', Boolean(msg.value))
      emit({ event: 'reply', cmd: 'typing' })
      return
    case 'state':
      // y-protocols takes any JSON value, as an application may give it.
      provider.awareness.setLocalState(msg.value)
      emit({ event: 'reply', cmd: 'state' })
      return
    case 'reconnect':
      // As after a network drop: the same provider and Y.Doc, on a new socket.
      provider.disconnect()
      provider.connect()
      emit({ event: 'reply', cmd: 'reconnect' })
      return
    case 'quit':
      quit().catch((err) => fatal('quit', err))
      return
    default:
      emit({ event: 'reply', cmd: cmd ?? null, error: `unknown command: ${JSON.stringify(cmd)}` })
  }
}

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity })
rl.on('line', (line) => {
  try {
    handle(line)
  } catch (err) {
    fatal(`command ${line}`, err)
  }
})
rl.on('close', () => {
  quit().catch((err) => fatal('quit', err))
})
