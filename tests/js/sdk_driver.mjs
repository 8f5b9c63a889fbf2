// Parley's TypeScript SDK (@parley/client, installed from its packed tarball) driven over
// the line protocol of stock_client.mjs, so pytest can act as an application would.
//
// Usage: node sdk_driver.mjs --url ws://127.0.0.1:PORT --session SESSION_ID --token TOKEN
//        [--name NAME] [--max-message-bytes N]
//
// stdout: one JSON object per line. Events: {"event":"state","state":…},
// {"event":"synced","synced":…}, {"event":"sent","id":…,"type":…,"attempt":…},
// {"event":"settled","tag":…,"ack":{…}} or {"event":"settled","tag":…,"error":{…}},
// {"event":"sdk-error","error":{…}} (an error of no command),
// {"event":"refused","error":{…}} (an upgrade refused, to be tried again),
// {"event":"thread","frame":{…}} (a side-thread frame, as the SDK's `thread` event gives it).
// stdin: one JSON command per line, each answered by one {"event":"reply","cmd":…} line:
//   {"cmd":"call","tag":…,"method":"prompt","args":["text"]}  (settles later, by tag;
//    "drop": true drops the socket as soon as the command is written;
//    "abort_ms": given up after that long)  {"cmd":"ready","tag":…,"timeout_ms":…}
//   {"cmd":"dump"}  {"cmd":"typing","value":true}  {"cmd":"quit"}
//   {"cmd":"presence","state":{…}} (setPresence; "raw": true sets it on the provider's
//    awareness, past the SDK's checks, as an app using the provider would; a throw is
//    answered {"thrown": {…}})

import { parseArgs } from 'node:util'
import { createInterface } from 'node:readline'
import WebSocket from 'ws'
import { connect, ParleyError } from '@parley/client'

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const fatal = (where, err) => {
  emit({ event: 'fatal', where, error: String(err?.message ?? err), stack: err?.stack })
  process.exit(1)
}
process.on('uncaughtException', (err) => fatal('uncaughtException', err))
process.on('unhandledRejection', (err) => fatal('unhandledRejection', err))
console.log = (...args) => console.error(...args)
console.info = (...args) => console.error(...args)

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    session: { type: 'string' },
    token: { type: 'string' },
    name: { type: 'string', default: 'sdk' },
    'max-message-bytes': { type: 'string' }
  }
})

const session = connect({
  url: args.url,
  sessionId: args.session,
  token: args.token,
  name: args.name,
  WebSocketPolyfill: WebSocket,
  ...(args['max-message-bytes'] === undefined ? {} : { maxMessageBytes: Number(args['max-message-bytes']) })
})
const describe = (error) => ({
  is_parley_error: error instanceof ParleyError,
  name: error?.name,
  code: error?.code,
  message: error?.message,
  command_id: error?.commandId ?? null,
  close_code: error?.closeCode ?? null,
  command: error?.command ?? null,
  status: error?.status ?? null,
  retry_after: error?.retryAfter ?? null
})
emit({ event: 'state', state: session.state })
session.on('state', (state) => emit({ event: 'state', state }))
session.on('synced', (synced) => emit({ event: 'synced', synced }))
// {"cmd":"call",…,"drop":true}: the socket is dropped right after that command is written
// (a connection lost before the reply came). It is torn down, not closed: a close
// handshake leaves the socket open for the server's reply, which a fast server sent first.
let dropNext = false
session.on('sent', (command, attempt) => {
  emit({ event: 'sent', id: command.id, type: command.type, attempt })
  if (dropNext) {
    dropNext = false
    session.provider.ws.terminate()
  }
})
session.on('error', (error) => emit({ event: 'sdk-error', error: describe(error) }))
session.on('member', (member) => emit({ event: 'member', member }))
session.on('refused', (error) => emit({ event: 'refused', error: describe(error) }))
// This member's side-thread frames, as the SDK hands them to the application.
session.on('thread', (frame) => emit({ event: 'thread', frame }))

// For each reply: every length its text had when the transcript changed.
const replyLengths = new Map()
session.on('transcript', (entries) => {
  for (const entry of entries) {
    if (entry.kind !== 'reply') continue
    if (!replyLengths.has(entry.id)) replyLengths.set(entry.id, new Set())
    replyLengths.get(entry.id).add(entry.content.length)
  }
})

// resend: args [command], an `aborted` error's `command` (as `describe` gives it)
const METHODS = new Set([
  'prompt', 'message', 'cancel', 'pin', 'setFact', 'setPolicy', 'resend', 'openThread', 'threadPrompt'
])

const handle = (msg) => {
  switch (msg.cmd) {
    case 'call': {
      if (!METHODS.has(msg.method)) throw new Error(`unknown method ${msg.method}`)
      dropNext = Boolean(msg.drop)
      // "abort_ms": the call is given up after that long (an AbortSignal as its last argument)
      const extra = msg.abort_ms === undefined ? [] : [{ signal: AbortSignal.timeout(msg.abort_ms) }]
      session[msg.method](...msg.args, ...extra).then(
        (ack) => emit({ event: 'settled', tag: msg.tag, ack }),
        (error) => emit({ event: 'settled', tag: msg.tag, error: describe(error) })
      )
      return { tag: msg.tag }
    }
    case 'ready': // {"cmd":"ready","tag":…,"timeout_ms":…}: settles by tag
      session.ready(msg.timeout_ms).then(
        () => emit({ event: 'settled', tag: msg.tag, ack: { type: 'ready' } }),
        (error) => emit({ event: 'settled', tag: msg.tag, error: describe(error) })
      )
      return { tag: msg.tag }
    case 'dump':
      return {
        state: session.state,
        synced: session.synced,
        transcript: session.transcript,
        queue: session.queue,
        presence: session.presence,
        policy: session.policy,
        pins: session.pins,
        facts: session.facts,
        unanswered: Object.fromEntries(session.unanswered),
        presence_refused: session.presenceRefused == null ? null : describe(session.presenceRefused),
        reply_lengths_seen: Object.fromEntries(
          [...replyLengths].map(([id, seen]) => [id, seen.size]))
      }
    case 'presence':
      try {
        if (msg.raw) session.provider.awareness.setLocalState(msg.state)
        else session.setPresence(msg.state)
        return {}
      } catch (error) {
        return { thrown: describe(error) }
      }
    case 'typing':
      session.setTyping(Boolean(msg.value))
      return {}
    case 'quit':
      session.close()
      emit({ event: 'reply', cmd: 'quit' })
      process.exit(0)
    default:
      return { error: `unknown command: ${JSON.stringify(msg.cmd)}` }
  }
}

createInterface({ input: process.stdin, crlfDelay: Infinity })
  .on('line', (line) => {
    if (!line.trim()) return
    const msg = JSON.parse(line)
    emit({ event: 'reply', cmd: msg.cmd, ...handle(msg) })
  })
  .on('close', () => {
    session.close()
    process.exit(0)
  })
