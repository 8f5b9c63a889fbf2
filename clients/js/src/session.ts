/**
 * `connect()` and the session it returns: a stock `yjs` document synced by a stock
 * `y-websocket` provider, plus Parley's command channel through the provider's own extension
 * point (`provider.messageHandlers[100]`). The SDK writes its command frames to the open
 * socket, and reads every frame the provider reads under one guard (`frames.ts`).
 */

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { uuidv4 } from 'lib0/random'
import {
  MAX_MESSAGE_BYTES,
  MESSAGE_COMMAND,
  Outbox,
  PACING,
  errorOfReply,
  readReply,
  type Command,
  type Pacing,
  type Reply
} from './channel.js'
import { ParleyError, errorForClose, refusalOfClose } from './errors.js'
import { MESSAGE_SYNC, checkSyncMessage, frameGuarded } from './frames.js'
import { presenceFrameBytes } from './presence.js'
import { FINAL_STATUSES, refusalAware, refusalOf } from './refusal.js'
import { TranscriptView, peersOf, queueOf } from './views.js'
import type {
  Ack,
  CancelAck,
  CommandOptions,
  ConnectionState,
  Entry,
  FactAck,
  MemberFrame,
  MessageAck,
  Peer,
  PinAck,
  Policy,
  PolicyAck,
  PromptAck,
  QueueItem,
  RestrictedText,
  ThreadAck,
  ThreadFrame,
  ThreadOpenAck,
  ThreadRunAck
} from './types.js'

type WebSocketClass = NonNullable<ConstructorParameters<typeof WebsocketProvider>[3]>['WebSocketPolyfill']

/** The server's close for a frame over its size limit. */
const TOO_BIG = 1009

export interface ConnectOptions {
  /** The server (`ws://127.0.0.1:8765`) or its sessions endpoint (`…/ws/sessions`). */
  readonly url: string
  readonly sessionId: string
  /** A client token of a member of the session. */
  readonly token: string
  /** A WebSocket class where there is no global one (Node 20: `ws`'s default export). */
  readonly WebSocketPolyfill?: unknown
  /** Shown to the others as `user.name` in presence. */
  readonly name?: string
  /** How fast commands go out (default `PACING`: under the server's default budget). */
  readonly pacing?: Pacing
  /**
   * The server's largest message, `PARLEY_MAX_WS_MESSAGE_BYTES` (default `MAX_MESSAGE_BYTES`,
   * the server's default, 4 MiB): a command whose frame is larger rejects `too_large` before
   * it is written. Set it to a server's own limit when that is lower.
   */
  readonly maxMessageBytes?: number
  /**
   * How long a socket the SDK closed (for a frame it cannot read) waits for the server to
   * finish the close before it is dropped and the SDK connects again (default
   * `CLOSE_TIMEOUT_MS`, 3 s; `ws` alone waits 30 s).
   */
  readonly closeTimeoutMs?: number
}

export interface SessionEvents {
  /** The transcript changed (an entry came, changed status, or a reply streamed on). */
  transcript: (entries: readonly Entry[]) => void
  queue: (queue: readonly QueueItem[]) => void
  presence: (peers: readonly Peer[]) => void
  state: (state: ConnectionState) => void
  /** Whether this client holds the server's document (again, after a reconnect). */
  synced: (synced: boolean) => void
  /** An error that answers no command (`id` null): a refused frame, say. */
  error: (error: ParleyError) => void
  restricted: (text: RestrictedText) => void
  /** A member's role, capabilities or display name changed, or they joined or left. */
  member: (member: MemberFrame) => void
  /** This member's side-threads: a thread stored, reply text streamed, one deleted. */
  thread: (frame: ThreadFrame) => void
  /** A command was written to a socket: `attempt` 1 the first time, 2 when it was resent
   * (unanswered when its socket closed, so written again to the next). */
  sent: (command: Readonly<Command>, attempt: number) => void
  /** The server refused the socket at the upgrade, to be tried again (`rate_limited`,
   * `unavailable`; after its `retryAfter`). Seen under Node's `ws` only: a browser cannot
   * read a refused upgrade. */
  refused: (error: ParleyError) => void
}

type Listeners = { [K in keyof SessionEvents]: Set<SessionEvents[K]> }

/** The server's bound on a command id. */
const MAX_ID_CHARS = 128 // code points, as the server counts them

/**
 * Only the characters the server takes for blank (Python's `str.strip()`, `str.isspace`):
 * not JavaScript's `trim()`, which also strips U+FEFF and keeps U+001C-U+001F and U+0085
 * (review: an id the server acks, `"\ufeff"`, was refused here as blank).
 */
const BLANK = /^[\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$/

/**
 * Why the server would refuse `id` as a command's id, or null: refused here, since its
 * error could not name the command (review: a number id waited for good).
 */
const idRefusal = (id: unknown): string | null => {
  if (typeof id !== 'string' || BLANK.test(id)) return "'id' must be a non-empty string"
  if ([...id].length > MAX_ID_CHARS) return `'id' exceeds ${MAX_ID_CHARS} characters`
  return null
}

const sessionsEndpoint = (url: string): string => {
  const base = url.replace(/\/+$/, '')
  return base.endsWith('/ws/sessions') ? base : `${base}/ws/sessions`
}

export class ParleySession {
  /** The stock document and provider underneath, for what the SDK does not cover. */
  readonly doc: Y.Doc
  readonly provider: WebsocketProvider
  private readonly outbox: Outbox
  private readonly view: TranscriptView
  private readonly listeners: Listeners = {
    transcript: new Set(),
    queue: new Set(),
    presence: new Set(),
    state: new Set(),
    synced: new Set(),
    error: new Set(),
    restricted: new Set(),
    member: new Set(),
    thread: new Set(),
    sent: new Set(),
    refused: new Set()
  }

  private _state: ConnectionState = 'connecting'
  private _closeError: ParleyError | null = null
  private readonly maxMessageBytes: number
  private readonly shownAs: Record<string, unknown>
  /** The largest presence frame written to a socket (a close 1009 may be the state's). */
  private presenceWritten: { socket: object | null, bytes: number } = { socket: null, bytes: 0 }
  private _presenceRefused: ParleyError | null = null
  private _refused: ParleyError | null = null
  private retryTimer: ReturnType<typeof setTimeout> | null = null

  constructor (options: ConnectOptions) {
    this.doc = new Y.Doc()
    const transcript = this.doc.getArray<unknown>('transcript')
    const queue = this.doc.getArray<unknown>('queue')
    this.view = new TranscriptView(transcript)
    this.maxMessageBytes = options.maxMessageBytes ?? MAX_MESSAGE_BYTES
    this.shownAs = { user: { name: options.name ?? null }, typing: false }
    // The page's WebSocket unless given one; none (Node without `ws`): the provider's error.
    const socketClass = (options.WebSocketPolyfill ?? globalThis.WebSocket) as WebSocketClass | undefined
    this.provider = new WebsocketProvider(
      sessionsEndpoint(options.url),
      options.sessionId,
      this.doc,
      {
        // commands=binary: this client speaks commands, so the server sends it the frames
        // that answer no command from the start, after a reconnect too.
        params: { token: options.token, commands: 'binary' },
        // No BroadcastChannel: two sessions of one process or browser would pass each
        // other's presence along, and the server stamps a state with the member of the
        // socket that first sent it (review: bob was shown as alice).
        disableBc: true,
        // 44xx is final, as stock clients take it, except a 4429 that says when to come
        // back (`refusalOfClose`): it is waited out (`onRefusal`), and connected again.
        shouldReconnect: (event: CloseEvent) =>
          !(event.code >= 4400 && event.code < 4500) || refusalOfClose(event.code, event.reason) !== null,
        ...(socketClass === undefined
          ? {}
          : {
              WebSocketPolyfill: refusalAware(
                frameGuarded(socketClass, (error) => this.onUndecodable(error), options.closeTimeoutMs)
              )
            })
      }
    )
    const provider = this.provider
    // A sync message that cannot be read throws, as other frames do, and not only logs.
    const stockSync = provider.messageHandlers[MESSAGE_SYNC]
    if (stockSync !== undefined) {
      provider.messageHandlers[MESSAGE_SYNC] = (encoder, decoder, ...rest) => {
        checkSyncMessage(decoder)
        stockSync(encoder, decoder, ...rest)
      }
    }
    // Commands go out once the socket has synced, so the reply to a resent command comes
    // after the document it may be reconciled with (sync step 2 is answered first).
    this.outbox = new Outbox(
      {
        current: () => {
          const ws = provider.ws
          const ready = provider.synced && ws !== null && ws.readyState === 1
          return ready ? ws : null
        },
        write: (frame) => provider.ws?.send(frame)
      },
      (command, attempt) => this.emit('sent', command, attempt),
      (command, reply, sends) => this.reconcile(command, reply, sends),
      options.pacing ?? PACING,
      this.maxMessageBytes
    )
    // What this throws (a frame that is not JSON, an ack that cannot be read) is caught by
    // the socket's guard (`frameGuarded`): the socket starts over, the command is resent.
    provider.messageHandlers[MESSAGE_COMMAND] = (_encoder, decoder) => this.onReply(readReply(decoder))
    provider.on('status', ({ status }) => {
      if (status === 'connected') {
        this._refused = null
        this.notePresence() // the provider writes the state to each socket as it opens
      }
      if (this._state !== 'closed') this.setState(status)
    })
    provider.on('sync', (synced) => {
      if (synced) this.outbox.flush()
      this.emit('synced', synced)
    })
    provider.on('closed', ({ code, reason }) => this.end(errorForClose(code, reason)))
    provider.on('connection-close', (event) => {
      const socket = provider.ws // still the socket that closed
      const refusal = refusalOf(socket) ?? (event == null ? null : refusalOfClose(event.code, event.reason))
      if (refusal !== null) this.onRefusal(refusal)
      if (event?.code === TOO_BIG && socket !== null) this.onTooBig(socket)
      // Presence goes out again on the next socket under a newer clock: peers keep the
      // clock they last saw, and ignored the same one until its renewal (review: after a
      // server restart everyone looked alone for up to 15 s).
      const state = provider.awareness.getLocalState()
      if (state !== null) provider.awareness.setLocalState({ ...state })
    })

    // Snapshots are built only for listeners (or when read), not on every update.
    transcript.observeDeep((events) => {
      this.view.invalidate(events)
      if (this.listeners.transcript.size > 0) this.emit('transcript', this.view.entries)
    })
    queue.observeDeep(() => {
      if (this.listeners.queue.size > 0) this.emit('queue', this.queue)
    })
    provider.awareness.on('change', () => {
      if (this.listeners.presence.size > 0) this.emit('presence', this.presence)
    })
    provider.awareness.on('update', ({ added, updated }: { added: number[], updated: number[] }) => {
      const own = this.doc.clientID
      if (added.includes(own) || updated.includes(own)) this.notePresence()
    })
    provider.awareness.setLocalState(this.shownAs)
    if (provider.wsconnected) this.setState('connected')
  }

  // -- commands: each a Promise of its ack, rejected with a ParleyError ------------------

  /** Ask the model; the ack carries the prompt's `prompt_id` and `seq`. */
  prompt (text: string, options?: CommandOptions): Promise<PromptAck> {
    return this.command<PromptAck>({ type: 'prompt', text }, options)
  }

  /** Talk to the other members only. */
  message (text: string, options?: CommandOptions): Promise<MessageAck> {
    return this.command<MessageAck>({ type: 'message', text }, options)
  }

  /** Cancel a waiting or running prompt (one's own; an owner anyone's). */
  cancel (promptId: string, options?: CommandOptions): Promise<CancelAck> {
    return this.command<CancelAck>({ type: 'cancel', prompt_id: promptId }, options)
  }

  /** Keep an entry in every model input (or stop keeping it). */
  pin (entryId: string, pinned = true, options?: CommandOptions): Promise<PinAck> {
    return this.command<PinAck>({ type: pinned ? 'pin' : 'unpin', entry_id: entryId }, options)
  }

  /** Set a session fact (one line), or remove it with null. */
  setFact (key: string, value: string | null, options?: CommandOptions): Promise<FactAck> {
    return this.command<FactAck>({ type: 'set_fact', key, value }, options)
  }

  /** Change the scheduling policy (owners). */
  setPolicy (policy: Policy, options?: CommandOptions): Promise<PolicyAck> {
    return this.command<PolicyAck>({ type: 'set_policy', policy }, options)
  }

  // -- private side-threads (docs/threads.md) ---------------------------------------------

  /** Open a side-thread, its context the session up to `anchor` (an entry id) or now. */
  openThread (options: { anchor?: string, title?: string } = {}): Promise<ThreadOpenAck> {
    const anchor = options.anchor === undefined ? {} : { anchor: options.anchor }
    return this.command<ThreadOpenAck>({ type: 'thread_open', title: options.title ?? '', ...anchor })
  }

  /** Ask in a side-thread: answered to this member alone (`thread` events). */
  threadPrompt (threadId: string, text: string, options?: CommandOptions): Promise<ThreadRunAck> {
    return this.command<ThreadRunAck>({ type: 'thread_prompt', thread_id: threadId, text }, options)
  }

  /** Ask for a draft summary of the side-thread to share (its next reply). */
  threadSummarise (threadId: string): Promise<ThreadRunAck> {
    return this.command<ThreadRunAck>({ type: 'thread_summarise', thread_id: threadId })
  }

  /** Post text, or picked replies, into the session as this member's message. */
  threadShare (threadId: string, what: { text: string } | { turn_ids: string[] }): Promise<MessageAck> {
    return this.command<MessageAck>({ type: 'thread_share', thread_id: threadId, ...what })
  }

  /** Close (kept, no more prompts) or delete a side-thread. */
  closeThread (threadId: string, remove = false): Promise<ThreadAck> {
    return this.command<ThreadAck>({ type: remove ? 'thread_delete' : 'thread_close', thread_id: threadId })
  }

  /**
   * Send `command` (an `aborted` error's `command`: its type, id and fields) again by its id:
   * the server answers a command it stored with its first ack, and stores nothing twice.
   */
  resend<T extends Ack = Ack> (command: Readonly<Command>, options?: { signal?: AbortSignal }): Promise<T> {
    const { id, ...fields } = command
    return this.command<T>(fields, { ...options, id })
  }

  private command<T extends Ack> (fields: Record<string, unknown>, options?: CommandOptions): Promise<T> {
    if (this._closeError !== null) return Promise.reject(this._closeError)
    const refused = options?.id === undefined ? null : idRefusal(options.id)
    if (refused !== null) return Promise.reject(new ParleyError('invalid', refused))
    const command = { ...fields, id: options?.id ?? uuidv4() } as Command
    return this.outbox.send(command, options?.signal) as Promise<unknown> as Promise<T>
  }

  /** Commands sent and not yet answered: id → times written to a socket. */
  get unanswered (): ReadonlyMap<string, number> {
    return this.outbox.unanswered()
  }

  // -- the document, read-only -----------------------------------------------------------

  get transcript (): readonly Entry[] {
    return this.view.entries
  }

  /** One entry by id, or undefined. */
  entry (id: string): Entry | undefined {
    return this.view.entries.find((entry) => entry.id === id)
  }

  /** The prompts waiting to run, in the order they will run. */
  get queue (): readonly QueueItem[] {
    return queueOf(this.doc.getArray<unknown>('queue'))
  }

  get policy (): Policy | null {
    const policy = this.doc.getMap<unknown>('meta').get('policy')
    return typeof policy === 'string' ? (policy as Policy) : null
  }

  get pins (): readonly string[] {
    return Object.freeze(this.doc.getArray<string>('pins').toArray())
  }

  get facts (): Readonly<Record<string, string>> {
    // Own properties, whatever the key (a plain object's `toJSON()` drops `__proto__`).
    return Object.freeze(Object.fromEntries(this.doc.getMap<string>('facts').entries()))
  }

  // -- presence --------------------------------------------------------------------------

  get presence (): readonly Peer[] {
    return peersOf(this.provider.awareness)
  }

  /**
   * Show this state to the others in place of the one shown (null: not present any more).
   * Throws `too_large`, before anything is sent and keeping the state shown, for one whose
   * frame is over the server's message limit (`maxMessageBytes`): the server would close
   * every socket it went to with 1009.
   */
  setPresence (state: Record<string, unknown> | null): void {
    if (state !== null) {
      const clock = (this.provider.awareness.meta.get(this.doc.clientID)?.clock ?? 0) + 1
      const bytes = presenceFrameBytes(this.doc.clientID, clock, state)
      if (bytes > this.maxMessageBytes) {
        const limit = `the server's message limit (${this.maxMessageBytes} bytes)`
        throw new ParleyError('too_large', `the presence state (${bytes} bytes) exceeds ${limit}`)
      }
    }
    this._presenceRefused = null
    this.provider.awareness.setLocalState(state)
  }

  /** The presence state the server refused (closed its socket 1009), or null: it is not
   * sent again, and this client is shown with its default state (`name`) instead. */
  get presenceRefused (): ParleyError | null {
    return this._presenceRefused
  }

  setTyping (typing: boolean): void {
    if (this.provider.awareness.getLocalState()?.['typing'] !== typing) {
      this.provider.awareness.setLocalStateField('typing', typing)
    }
  }

  // -- connection ------------------------------------------------------------------------

  get state (): ConnectionState {
    return this._state
  }

  get synced (): boolean {
    return this.provider.synced
  }

  /** Why the session closed for good (a final close code, or `close()`), else null. */
  get closeError (): ParleyError | null {
    return this._closeError
  }

  /**
   * Resolves once the document is synced; rejects if the session closes first (a socket
   * refused for good at the upgrade: its error, `unauthenticated`, `forbidden`, …), or once
   * `timeoutMs` passed (none: no bound) with `unavailable`, or with the error of the last
   * upgrade the server refused (`rate_limited`, `unavailable`: with `retryAfter`), at once
   * when its `Retry-After` falls past the time left. The session goes on connecting.
   */
  ready (timeoutMs?: number): Promise<void> {
    if (this.provider.synced) return Promise.resolve()
    if (this._closeError !== null) return Promise.reject(this._closeError)
    const deadline = timeoutMs === undefined ? Infinity : performance.now() + timeoutMs
    return new Promise((resolve, reject) => {
      const done = (): void => {
        offSynced()
        offState()
        offRefused()
        if (timer !== undefined) clearTimeout(timer)
      }
      const offRefused = this.on('refused', (refusal) => {
        if (performance.now() + (refusal.retryAfter ?? 0) * 1000 < deadline) return
        done()
        reject(refusal) // review RK-4: not a plain timeout once the time is out
      })
      const offSynced = this.on('synced', (synced) => {
        if (!synced) return
        done()
        resolve()
      })
      const offState = this.on('state', (state) => {
        if (state !== 'closed') return
        done()
        reject(this._closeError)
      })
      const timer = timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
          done()
          const late = new ParleyError('unavailable', `not synced within ${timeoutMs} ms; still trying`)
          reject(this._refused ?? late)
        }, timeoutMs)
    })
  }

  /** Leave the session: unanswered commands reject with code `closed`. */
  close (): void {
    if (this.retryTimer !== null) clearTimeout(this.retryTimer)
    this.end(new ParleyError('closed', 'the session was closed'))
    this.provider.destroy()
    this.doc.destroy()
  }

  on<K extends keyof SessionEvents> (event: K, listener: SessionEvents[K]): () => void {
    const set = this.listeners[event] as Set<SessionEvents[K]>
    set.add(listener)
    return () => set.delete(listener)
  }

  // -- internals -------------------------------------------------------------------------

  /** Note the size of this client's state as written to the socket open now, if any. */
  private notePresence (): void {
    const socket = this.provider.ws
    const state = this.provider.awareness.getLocalState()
    if (socket === null || !this.provider.wsconnected || state === null) return
    const clock = this.provider.awareness.meta.get(this.doc.clientID)?.clock ?? 0
    const bytes = presenceFrameBytes(this.doc.clientID, clock, state)
    const before = this.presenceWritten.socket === socket ? this.presenceWritten.bytes : 0
    this.presenceWritten = { socket, bytes: Math.max(before, bytes) }
  }

  /**
   * The server closed `socket` for a frame over its limit (1009): the largest frame written
   * to it is refused. A command only when it was larger than the presence state written
   * there; else the state (review RK-5: the SDK blamed small prompts and wrote the state to
   * every next socket, each closed 1009 in turn), and this client is shown with its default.
   */
  private onTooBig (socket: object): void {
    const presence = this.presenceWritten.socket === socket ? this.presenceWritten.bytes : 0
    if (this.outbox.refuseLargest(socket, presence) || presence === 0) return
    const error = new ParleyError('too_large', `the presence state (${presence} bytes) is too large`)
    this._presenceRefused = error
    this.provider.awareness.setLocalState(this.shownAs)
    this.emit('error', error)
  }

  /**
   * The socket was refused at the upgrade, or closed with a reason that says when to come
   * back (a 1013's or a 4429's `retry_after_ms`): for good (401, 403, 404) the session ends
   * with the error, as its close code would end it; else it is tried again, after the
   * server's wait when it gave one (the provider's own back-off is at most 2.5 s).
   */
  private onRefusal (refusal: ParleyError): void {
    if (FINAL_STATUSES.has(refusal.status ?? 0)) {
      this.provider.shouldConnect = false // as the provider does after a final close
      this.end(refusal)
      return
    }
    this._refused = refusal
    if (refusal.retryAfter !== null && refusal.retryAfter > 0 && this.retryTimer === null) {
      this.provider.shouldConnect = false
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null
        if (this._closeError === null) this.provider.connect()
      }, refusal.retryAfter * 1000)
    }
    this.emit('refused', refusal)
  }

  /**
   * A frame from the server could not be read: its socket was closed 1002 (`frameGuarded`)
   * and the provider connects again; the commands it left unanswered are written again.
   */
  private onUndecodable (error: unknown): void {
    const why = error instanceof Error ? error.message : String(error)
    const message = `the server sent a frame that cannot be read (${why}); connecting again`
    this.emit('error', new ParleyError('invalid', message.slice(0, 300)))
  }

  private onReply (reply: unknown): void {
    if (typeof reply !== 'object' || reply === null) return
    const message = reply as Record<string, unknown>
    if (this.outbox.settle(message)) return
    if (message['type'] === 'restricted') {
      this.emit('restricted', message as unknown as RestrictedText)
    } else if (message['type'] === 'member') {
      this.emit('member', message as unknown as MemberFrame)
    } else if (typeof message['type'] === 'string' && message['type'].startsWith('thread')) {
      this.emit('thread', message as unknown as ThreadFrame)
    } else if (message['type'] === 'error') {
      this.emit('error', errorOfReply(message))
    }
    // an ack of no pending command (one settled already) needs nothing
  }

  /**
   * A cancel that went out twice and is refused as `conflict` was carried out by its first
   * try when the prompt now stands cancelled: it gets the ack the first try would have had.
   */
  private reconcile (command: Command, reply: Reply, sends: number): Reply {
    if (sends < 2 || command.type !== 'cancel' || reply['code'] !== 'conflict') return reply
    const prompt = this.entry(String(command['prompt_id']))
    if (prompt?.reason_code !== 'cancelled') return reply
    return { type: 'ack', id: command.id, seq: prompt.seq, prompt_id: prompt.id }
  }

  private end (error: ParleyError): void {
    if (this._closeError !== null) return
    this._closeError = error
    this.outbox.rejectAll(error)
    this.setState('closed')
  }

  private setState (state: ConnectionState): void {
    if (state === this._state) return
    this._state = state
    this.emit('state', state)
  }

  private emit<K extends keyof SessionEvents> (
    event: K,
    ...args: Parameters<SessionEvents[K]>
  ): void {
    for (const listener of [...this.listeners[event]]) {
      try {
        ;(listener as (...a: Parameters<SessionEvents[K]>) => void)(...args)
      } catch (error) {
        // A listener's bug must not break the document's update or the provider's loop.
        queueMicrotask(() => {
          throw error
        })
      }
    }
  }
}

/** Join a session. The session starts connecting at once; `await session.ready()` to wait
 * for the first sync. Commands sent before then are written once the socket has synced. */
export const connect = (options: ConnectOptions): ParleySession => new ParleySession(options)
