/**
 * Parley's command channel over a stock y-websocket provider: a command is a binary frame of
 * message type 100 (`varUint(100)`, then the JSON as a `varString`), and its reply comes back
 * the same way to the one handler registered in `provider.messageHandlers[100]`.
 *
 * The outbox keeps every command until its reply arrives. A command is written once per
 * socket: when a socket is ready, every command not yet answered is written to it, so a
 * command sent while offline, or unanswered when the socket dropped, goes out once more under
 * its same id, and the server answers a resent prompt or message with its first ack (nothing
 * stored twice). Pins, facts and policies are idempotent; a resent cancel that the first try
 * carried out is reconciled by the session (`reconcile`).
 *
 * Commands are written in the order they were made, paced (`Pacing`): written all at once
 * after a reconnect, those past the server's command budget of a socket were refused
 * `rate_limited` though they would have been taken a moment later, and enough refusals
 * close the socket for good (4429).
 */

import * as decoding from 'lib0/decoding'
import * as encoding from 'lib0/encoding'
import { ParleyError, isErrorCode } from './errors.js'

export const MESSAGE_COMMAND = 100

export type Command = { readonly type: string, readonly id: string } & Record<string, unknown>

export const encodeCommand = (command: Command): Uint8Array => {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_COMMAND)
  encoding.writeVarString(encoder, JSON.stringify(command))
  return encoding.toUint8Array(encoder)
}

/** The JSON of a type-100 frame whose message type the provider already read. */
export const readReply = (decoder: decoding.Decoder): unknown =>
  JSON.parse(decoding.readVarString(decoder))

/** Where frames go: the provider's socket while it is ready, else nowhere. */
export interface FrameSink {
  /** The ready socket now (any value that identifies it), or null. */
  current (): object | null
  write (frame: Uint8Array): void
}

export type Reply = Record<string, unknown>

export type Reconcile = (command: Command, reply: Reply, sends: number) => Reply

/**
 * At most `inFlight` commands written to a socket and unanswered at once (the next as each
 * is answered); at most `burst` written at once, and `perSecond` on average after that. The
 * defaults stay under the server's default budget of a socket (30 at once, then 10 a second)
 * by a margin: the server counts a command when it reads it, so one that took longer to
 * reach it than the next leaves the server less time to refill than the client counted. Set
 * them under a server's own when it has lower ones. (The Python SDK's `Pacing`, alike.)
 */
export interface Pacing {
  readonly inFlight: number
  readonly perSecond: number
  readonly burst: number
}

export const PACING: Pacing = Object.freeze({ inFlight: 8, perSecond: 8, burst: 20 })

/**
 * The largest message the server takes by default (`PARLEY_MAX_WS_MESSAGE_BYTES`). Past its
 * limit the server closes the socket, 1009, often before the frame is all written, so the
 * client sees a reset (1006) and could not tell the command was the cause (review G7: a 60 MB
 * prompt went out 8 times). A command larger is refused before it is written.
 */
export const MAX_MESSAGE_BYTES = 4 * 1024 * 1024

interface Pending {
  readonly command: Command
  readonly frame: Uint8Array
  /** Settles with the reply (a resend by the id while it waits gets this one). */
  promise: Promise<Record<string, unknown>>
  readonly resolve: (reply: Record<string, unknown>) => void
  readonly reject: (error: ParleyError) => void
  /** The socket this command was last written to (`RESTING`: waiting out a refusal). */
  sentOn: object | null
  sends: number
  /** Refused `rate_limited` so often, each time sent again after its `retry_after_ms`. */
  refusals: number
  retryTimer: ReturnType<typeof setTimeout> | null
}

/** Where a command refused `rate_limited` waits until the server said to send it again. */
const RESTING: object = Object.freeze({})
/** The longest a refused command waits to be sent again: past it, it is refused. */
const MAX_RETRY_AFTER_MS = 60_000
/** Times a command refused `rate_limited` is sent again. */
const MAX_RATE_RETRIES = 3
/** The slowest (commands a second) refusals over the member's budget bring a session to. */
const MIN_PER_SECOND = 0.5
/** Commands a second the rate gets back with each ack. */
const RECOVER_PER_ACK = 0.1

export class Outbox {
  private readonly pending = new Map<string, Pending>()
  /** Commands the rate allows now (a token bucket, across sockets), as of `updated` (ms). */
  private tokens: number
  private updated: number
  /** A flush due once the rate allows the next command. */
  private timer: ReturnType<typeof setTimeout> | null = null
  /**
   * The rate now: `pacing.perSecond`, halved by each refusal over the member's budget, back
   * a step with each ack (the member's other sessions share that budget: review RH-2).
   */
  private perSecond: number

  constructor (
    private readonly sink: FrameSink,
    private readonly onSent: (command: Command, attempt: number) => void = () => {},
    /** The reply to settle with, given the one received and how often the command went out. */
    private readonly reconcile: Reconcile = (_command, reply) => reply,
    private readonly pacing: Pacing = PACING,
    /** The server's message limit: a command whose frame is larger is never written. */
    private readonly maxFrameBytes: number = MAX_MESSAGE_BYTES,
    /** Milliseconds, monotonic. */
    private readonly now: () => number = () => performance.now()
  ) {
    if (!(pacing.inFlight >= 1 && pacing.burst >= 1 && pacing.perSecond > 0)) {
      throw new RangeError('pacing: inFlight and burst are at least 1, perSecond above 0')
    }
    if (!(maxFrameBytes >= 1)) throw new RangeError('maxMessageBytes: at least 1')
    this.tokens = pacing.burst
    this.updated = now()
    this.perSecond = pacing.perSecond
  }

  /**
   * Queue `command` and write it now if a socket is open; settles with its reply. Once
   * `signal` aborts, the command is given up: not written again, and rejected `aborted`
   * (one already written may have been stored: the error's `command` resends it by its id).
   * A command under the id of one still waiting shares its reply when it is the same
   * command, and is refused `conflict` when it is another. A command whose frame is over the
   * server's message limit is refused `too_large`, and never written.
   */
  send (command: Command, signal?: AbortSignal): Promise<Record<string, unknown>> {
    const frame = encodeCommand(command)
    if (frame.length > this.maxFrameBytes) {
      const limit = `the server's message limit (${this.maxFrameBytes} bytes)`
      const message = `the command (${frame.length} bytes) exceeds ${limit}`
      return Promise.reject(new ParleyError('too_large', message, { commandId: command.id }))
    }
    const waiting = this.pending.get(command.id)
    if (waiting !== undefined) {
      const same = waiting.frame.length === frame.length && waiting.frame.every((b, i) => b === frame[i])
      if (same) return waiting.promise
      const message = 'this command id waits for its reply to another command'
      return Promise.reject(new ParleyError('conflict', message, { commandId: command.id }))
    }
    let entry: Pending | undefined
    const promise = new Promise<Record<string, unknown>>((resolve, reject) => {
      const giveUp = (): void => {
        if (entry === undefined || this.pending.get(command.id) !== entry) return
        this.pending.delete(command.id)
        if (entry.retryTimer !== null) clearTimeout(entry.retryTimer)
        const written = entry.sends > 0 ? 'written, and may have been stored' : 'never written'
        const options = { commandId: command.id, command }
        reject(new ParleyError('aborted', `given up (${written})`, options))
        this.flush() // room for the next, if it was written
      }
      entry = {
        command,
        frame,
        promise: Promise.resolve({}),
        resolve: (reply) => {
          signal?.removeEventListener('abort', giveUp)
          resolve(reply)
        },
        reject: (error) => {
          signal?.removeEventListener('abort', giveUp)
          reject(error)
        },
        sentOn: null,
        sends: 0,
        refusals: 0,
        retryTimer: null
      }
      this.pending.set(command.id, entry)
      if (signal?.aborted === true) {
        giveUp()
        return
      }
      signal?.addEventListener('abort', giveUp, { once: true })
    })
    if (entry !== undefined) {
      entry.promise = promise
      if (this.pending.get(command.id) === entry) this.flush()
    }
    return promise
  }

  /**
   * Write the unanswered commands not yet written to the ready socket, in order, as many as
   * the pacing allows now (call when a socket is ready; a reply calls it for the next).
   */
  flush (): void {
    const socket = this.sink.current()
    if (socket === null) return
    const now = this.now()
    const refill = (Math.max(now - this.updated, 0) / 1000) * this.perSecond
    this.tokens = Math.min(this.pacing.burst, this.tokens + refill)
    this.updated = Math.max(this.updated, now) // a pause (a refusal's) runs to its end
    let inFlight = 0
    for (const entry of this.pending.values()) if (entry.sentOn === socket) inFlight += 1
    for (const entry of this.pending.values()) {
      if (entry.sentOn === socket || entry.sentOn === RESTING) continue
      if (inFlight >= this.pacing.inFlight) return // the next goes as one is answered
      if (this.tokens < 1) {
        const paused = Math.max(this.updated - now, 0)
        this.flushIn(paused + ((1 - this.tokens) / this.perSecond) * 1000)
        return
      }
      this.tokens -= 1
      inFlight += 1
      entry.sentOn = socket
      entry.sends += 1
      this.sink.write(entry.frame)
      this.onSent(entry.command, entry.sends)
    }
  }

  private flushIn (ms: number): void {
    if (this.timer !== null) return
    this.timer = setTimeout(() => {
      this.timer = null
      this.flush()
    }, Math.ceil(ms))
  }

  /**
   * Settle the command a reply answers. Returns false for a reply of no pending command
   * (an error with id null, a restricted text), which the caller handles.
   */
  settle (reply: Record<string, unknown>): boolean {
    const id = reply['id']
    if (typeof id !== 'string') return false
    const entry = this.pending.get(id)
    if (entry === undefined) return false
    // Read before the command is taken off: an ack that cannot be read leaves it to be
    // resent by its id (review SA: a `seq` of "seven" resolved the prompt with it).
    if (reply['type'] === 'ack') seqOf(reply)
    if (this.restAfterRefusal(entry, reply)) return true
    this.pending.delete(id)
    const settled = this.reconcile(entry.command, reply, entry.sends)
    if (settled['type'] === 'ack') {
      this.perSecond = Math.min(this.perSecond + RECOVER_PER_ACK, this.pacing.perSecond)
      entry.resolve(settled)
    } else {
      entry.reject(errorOfReply(settled))
    }
    this.flush() // room for the next
    return true
  }

  /**
   * A command refused `rate_limited` with `retry_after_ms` (a member's budget is across
   * their sockets, this pacing is per socket: review RH-2) waits that long and goes out
   * again by its id (it was not stored), nothing new meanwhile, and the pacing slows down;
   * refused `MAX_RATE_RETRIES` times, it is rejected. Whether it waits.
   */
  private restAfterRefusal (entry: Pending, reply: Record<string, unknown>): boolean {
    if (entry.refusals >= MAX_RATE_RETRIES) return false
    if (reply['type'] !== 'error' || reply['code'] !== 'rate_limited') return false
    const waitMs = retryAfterMs(reply)
    if (waitMs === null || waitMs > MAX_RETRY_AFTER_MS) return false
    entry.refusals += 1
    entry.sentOn = RESTING
    // Over the member's budget: this session sends nothing new until then either.
    this.tokens = Math.min(this.tokens, 0)
    this.updated = Math.max(this.updated, this.now() + waitMs)
    this.perSecond = Math.max(this.perSecond / 2, MIN_PER_SECOND)
    entry.retryTimer = setTimeout(() => {
      entry.retryTimer = null
      if (this.pending.get(entry.command.id) !== entry) return
      entry.sentOn = null
      this.flush()
    }, waitMs)
    this.flush() // room for the next meanwhile
    return true
  }

  /**
   * Reject the largest command written to `socket`, which the server closed for a frame over
   * its size limit (1009): written again to the next socket, it would close that one too.
   * Only one larger than `otherBytes`, the largest other frame written there (the presence
   * state: review RK-5, a state over the limit got small prompts refused); whether one was.
   */
  refuseLargest (socket: object, otherBytes = 0): boolean {
    let largest: Pending | null = null
    for (const entry of this.pending.values()) {
      if (entry.sentOn !== socket) continue
      if (largest === null || entry.frame.length > largest.frame.length) largest = entry
    }
    if (largest === null || largest.frame.length <= otherBytes) return false
    this.pending.delete(largest.command.id)
    const message = `the command (${largest.frame.length} bytes) is too large`
    largest.reject(new ParleyError('too_large', message, { commandId: largest.command.id }))
    return true
  }

  /** Reject every unanswered command with `error` (the session is over). */
  rejectAll (error: ParleyError): void {
    if (this.timer !== null) clearTimeout(this.timer)
    this.timer = null
    const entries = [...this.pending.values()]
    this.pending.clear()
    for (const entry of entries) {
      if (entry.retryTimer !== null) clearTimeout(entry.retryTimer)
      entry.reject(error)
    }
  }

  /** The ids of the commands not yet answered, with how many times each was written. */
  unanswered (): ReadonlyMap<string, number> {
    return new Map([...this.pending].map(([id, entry]) => [id, entry.sends]))
  }
}

/**
 * An ack's `seq`: a whole number, or none (null or absent); throws for any other (a string,
 * a fraction, 1e400 read as Infinity), as the Python SDK does, and the frame is undecodable.
 */
export const seqOf = (ack: Record<string, unknown>): number | null => {
  const seq = ack['seq']
  if (seq === undefined || seq === null) return null
  if (typeof seq === 'number' && Number.isSafeInteger(seq)) return seq
  const shown = typeof seq === 'number' ? String(seq) : JSON.stringify(seq) ?? typeof seq
  throw new ParleyError('invalid', `an ack's seq is no whole number: ${shown.slice(0, 40)}`)
}

/** The typed error of an `{"type": "error", …}` reply. */
export const errorOfReply = (reply: Record<string, unknown>): ParleyError => {
  const code = reply['code']
  const message = typeof reply['message'] === 'string' ? reply['message'] : String(code)
  const commandId = typeof reply['id'] === 'string' ? reply['id'] : null
  const waitMs = retryAfterMs(reply)
  const retryAfter = waitMs === null ? null : waitMs / 1000
  return new ParleyError(isErrorCode(code) ? code : 'internal', message, { commandId, retryAfter })
}

/** A refusal's `retry_after_ms` (when to send again), or null when it has none. */
const retryAfterMs = (reply: Record<string, unknown>): number | null => {
  const wait = reply['retry_after_ms']
  return typeof wait === 'number' && Number.isFinite(wait) && wait >= 0 ? wait : null
}
