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

interface Pending {
  readonly command: Command
  readonly frame: Uint8Array
  /** Settles with the reply (a resend by the id while it waits gets this one). */
  promise: Promise<Record<string, unknown>>
  readonly resolve: (reply: Record<string, unknown>) => void
  readonly reject: (error: ParleyError) => void
  /** The socket this command was last written to. */
  sentOn: object | null
  sends: number
}

export class Outbox {
  private readonly pending = new Map<string, Pending>()

  constructor (
    private readonly sink: FrameSink,
    private readonly onSent: (command: Command, attempt: number) => void = () => {},
    /** The reply to settle with, given the one received and how often the command went out. */
    private readonly reconcile: Reconcile = (_command, reply) => reply
  ) {}

  /**
   * Queue `command` and write it now if a socket is open; settles with its reply. Once
   * `signal` aborts, the command is given up: not written again, and rejected `aborted`
   * (one already written may have been stored: the error's `command` resends it by its id).
   * A command under the id of one still waiting shares its reply when it is the same
   * command, and is refused `conflict` when it is another.
   */
  send (command: Command, signal?: AbortSignal): Promise<Record<string, unknown>> {
    const frame = encodeCommand(command)
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
        const written = entry.sends > 0 ? 'written, and may have been stored' : 'never written'
        const options = { commandId: command.id, command }
        reject(new ParleyError('aborted', `given up (${written})`, options))
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
        sends: 0
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

  /** Write every unanswered command not yet written to the ready socket (call when one is). */
  flush (): void {
    const socket = this.sink.current()
    if (socket === null) return
    for (const entry of this.pending.values()) {
      if (entry.sentOn === socket) continue
      entry.sentOn = socket
      entry.sends += 1
      this.sink.write(entry.frame)
      this.onSent(entry.command, entry.sends)
    }
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
    this.pending.delete(id)
    const settled = this.reconcile(entry.command, reply, entry.sends)
    if (settled['type'] === 'ack') {
      entry.resolve(settled)
    } else {
      entry.reject(errorOfReply(settled))
    }
    return true
  }

  /**
   * Reject the largest command written to `socket`, which the server closed for a frame over
   * its size limit (1009): written again to the next socket, it would close that one too.
   */
  refuseLargest (socket: object): void {
    let largest: Pending | null = null
    for (const entry of this.pending.values()) {
      if (entry.sentOn !== socket) continue
      if (largest === null || entry.frame.length > largest.frame.length) largest = entry
    }
    if (largest === null) return
    this.pending.delete(largest.command.id)
    const message = `the command (${largest.frame.length} bytes) is too large`
    largest.reject(new ParleyError('too_large', message, { commandId: largest.command.id }))
  }

  /** Reject every unanswered command with `error` (the session is over). */
  rejectAll (error: ParleyError): void {
    const entries = [...this.pending.values()]
    this.pending.clear()
    for (const entry of entries) entry.reject(error)
  }

  /** The ids of the commands not yet answered, with how many times each was written. */
  unanswered (): ReadonlyMap<string, number> {
    return new Map([...this.pending].map(([id, entry]) => [id, entry.sends]))
  }
}

/** The typed error of an `{"type": "error", …}` reply. */
export const errorOfReply = (reply: Record<string, unknown>): ParleyError => {
  const code = reply['code']
  const message = typeof reply['message'] === 'string' ? reply['message'] : String(code)
  const commandId = typeof reply['id'] === 'string' ? reply['id'] : null
  return new ParleyError(isErrorCode(code) ? code : 'internal', message, { commandId })
}
