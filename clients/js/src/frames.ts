/**
 * Frames from the server that cannot be read. Every frame the provider reads (sync,
 * awareness, commands, and its message type first) is read inside `frameGuarded`'s guard:
 * one that throws closes its socket with 1002 and is reported, and the provider connects
 * again and syncs afresh, where the commands left unanswered are written again under their
 * ids (review SA F3: stock y-protocols threw on an awareness state that is not JSON, out of
 * the socket's message handler, which ends a Node process). The frames after it on that
 * socket are dropped. The Python SDK does the same (`UNDECODABLE`).
 */

import * as Y from 'yjs'
import * as decoding from 'lib0/decoding'

/** The close code for a frame not as the protocol says (RFC 6455: protocol error). */
export const CLOSE_UNDECODABLE = 1002

/**
 * How long a socket closed for a frame that cannot be read waits for the server to finish
 * the close (its close frame) before it is dropped and the provider connects again: a
 * server that never answers held it as long as `ws` waits, 30 s (FX44).
 */
export const CLOSE_TIMEOUT_MS = 3000

/** `WebSocket.CLOSED`. */
const CLOSED = 3

/** y-websocket's sync message (y-protocols: step 1, step 2, update). */
export const MESSAGE_SYNC = 0
const SYNC_STEP1 = 0
const SYNC_STEP2 = 1
const SYNC_UPDATE = 2

type SocketClass = new (...args: any[]) => object
type Handler = (this: unknown, event: unknown) => unknown

interface Closable {
  readyState?: number
  onclose?: unknown
  terminate?: () => void
  close (code?: number, reason?: string): void
}

/** The longest close reason a socket takes (123 bytes), in ASCII. */
const MAX_REASON = 123

const closeUndecodable = (socket: Closable, error: unknown, closeTimeoutMs: number): void => {
  const why = error instanceof Error ? error.message : String(error)
  const reason = `undecodable frame: ${why}`.replace(/[^\x20-\x7e]/g, '?').slice(0, MAX_REASON)
  try {
    socket.close(CLOSE_UNDECODABLE, reason)
  } catch {
    try {
      socket.close() // a browser's WebSocket takes no 1002 from a page
    } catch {}
  }
  const timer = setTimeout(() => dropUnclosed(socket), closeTimeoutMs)
  ;(timer as { unref?: () => void }).unref?.() // holds no Node process open
}

/**
 * `socket`'s close not finished in time: its close handler (the provider's) is called as
 * for a connection lost, 1006, so the provider connects again now, and a `ws` socket is
 * torn down (a browser's has no `terminate`: it is left to its own close).
 */
const dropUnclosed = (socket: Closable): void => {
  if (socket.readyState === CLOSED) return
  const handler = socket.onclose
  socket.onclose = null // the socket's own close, later, tells nobody again
  try {
    socket.terminate?.()
  } catch {}
  if (typeof handler === 'function') {
    const lost = { type: 'close', code: 1006, reason: 'the server did not finish the close', wasClean: false }
    ;(handler as Handler).call(socket, lost)
  }
}

const accessorOf = (prototype: object | null, name: string): PropertyDescriptor | undefined => {
  for (let at = prototype; at !== null; at = Object.getPrototypeOf(at) as object | null) {
    const descriptor = Object.getOwnPropertyDescriptor(at, name)
    if (descriptor !== undefined) return descriptor.set === undefined ? undefined : descriptor
  }
  return undefined
}

/**
 * `Base`, a WebSocket class, whose `onmessage` handler (the provider's, which reads the
 * frame) runs guarded: what it throws closes the socket 1002 (dropped if the server has not
 * finished the close after `closeTimeoutMs`) and goes to `onUndecodable`, never to the
 * socket's event loop.
 */
export const frameGuarded = <T extends SocketClass>(
  Base: T,
  onUndecodable: (error: unknown) => void,
  closeTimeoutMs: number = CLOSE_TIMEOUT_MS
): T =>
  class extends Base {
    constructor (...args: any[]) {
      super(...args)
      const socket = this as unknown as Closable
      let dropping = false
      const guard = (handler: unknown): unknown => {
        if (typeof handler !== 'function') return handler
        return function (this: unknown, event: unknown): void {
          if (dropping) return
          try {
            ;(handler as Handler).call(this, event)
          } catch (error) {
            dropping = true
            closeUndecodable(socket, error, closeTimeoutMs)
            onUndecodable(error)
          }
        }
      }
      // A browser's and `ws`'s handler is an accessor of the prototype (the socket calls
      // what it was given); a polyfill whose handler is a plain property calls ours.
      const native = accessorOf(Base.prototype as object, 'onmessage')
      let stored: unknown = null
      Object.defineProperty(this, 'onmessage', {
        configurable: true,
        enumerable: true,
        get: () => (native === undefined ? stored : native.get?.call(this)),
        set: (handler: unknown) => {
          if (native === undefined) stored = guard(handler)
          else native.set?.call(this, guard(handler))
        }
      })
    }
  }

/**
 * Throws when the sync message `decoder` is at cannot be read: stock y-protocols applies an
 * update inside a `try` that logs what it throws and goes on, so a garbled update left the
 * document short of the server's with no sign. Read from a copy; the stock handler reads
 * `decoder` after (its own `try` is then left to an observer's error, as in stock).
 */
export const checkSyncMessage = (decoder: decoding.Decoder): void => {
  const copy = decoding.clone(decoder)
  const type = decoding.readVarUint(copy)
  if (type === SYNC_STEP1) {
    Y.decodeStateVector(decoding.readVarUint8Array(copy))
  } else if (type === SYNC_STEP2 || type === SYNC_UPDATE) {
    Y.decodeUpdate(decoding.readVarUint8Array(copy))
  } else {
    throw new Error(`unknown sync message type ${type}`)
  }
}
