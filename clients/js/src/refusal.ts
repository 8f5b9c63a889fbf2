/**
 * An upgrade the server refused (HTTP 429 or 503 with `Retry-After`; 401, 403 or 404 for
 * good), as the typed error its status and JSON error body stand for (the REST API's
 * `{"error": {"code", "message"}}`), as the Python SDK reads it.
 *
 * A browser's WebSocket hides the refused response (it reports a close 1006), but Node's `ws`
 * shows it to an `unexpected-response` listener: `refusalAware` wraps such a class so that a
 * socket refused at the upgrade keeps its error (`refusalOf`) for the session to act on (review
 * RK-4: a refused socket was a plain 1006, retried every 2.5 s whatever the server asked).
 */

import { ParleyError, isErrorCode, type ErrorCode } from './errors.js'

/** Upgrades refused for good: retrying cannot help (the others, 429 and 503, are retried). */
export const FINAL_STATUSES: ReadonlySet<number> = new Set([401, 403, 404])

/** The code of a refusal whose body does not name one (a proxy's, say). */
const STATUS_CODES: Readonly<Record<number, ErrorCode>> = {
  401: 'unauthenticated',
  403: 'forbidden',
  404: 'not_found',
  409: 'conflict',
  413: 'too_large',
  422: 'invalid',
  429: 'rate_limited',
  502: 'provider_error',
  503: 'unavailable'
}

/** The most of a refusal's body read (an error body is a few hundred bytes). */
const MAX_BODY_BYTES = 64 * 1024

/** The typed error of a refusal: its body's code and message, else its status's and the text. */
export const errorOfRefusal = (status: number, body: string, retryAfter?: string): ParleyError => {
  let code: ErrorCode = STATUS_CODES[status] ?? 'internal'
  let message = body === '' ? `HTTP ${status}` : body
  try {
    const error = (JSON.parse(body) as { error?: { code?: unknown, message?: unknown } }).error
    if (isErrorCode(error?.code) && typeof error?.message === 'string') {
      code = error.code
      message = error.message
    }
  } catch {}
  const seconds = retryAfter === undefined ? NaN : Number(retryAfter)
  const wait = Number.isFinite(seconds) ? Math.max(seconds, 0) : null // a date is not read
  return new ParleyError(code, message, { status, retryAfter: wait })
}

const REFUSAL = Symbol('parley.refusal')

/** The error of the upgrade `socket` was refused with, or null (opened, or not known). */
export const refusalOf = (socket: unknown): ParleyError | null =>
  (socket as { [REFUSAL]?: ParleyError } | null)?.[REFUSAL] ?? null

interface Response {
  readonly statusCode?: number
  readonly headers: Record<string, string | string[] | undefined>
  on (event: 'data', listener: (chunk: Uint8Array) => void): unknown
  on (event: 'end' | 'error', listener: () => void): unknown
}

type SocketClass = new (...args: any[]) => object

/** `Base`, a WebSocket class, made to keep a refused upgrade's error where it can read it. */
export const refusalAware = <T extends SocketClass>(Base: T): T =>
  class extends Base {
    constructor (...args: any[]) {
      super(...args)
      const socket = this as unknown as {
        on?: (event: string, listener: (request: unknown, response: Response) => void) => void
        terminate: () => void
        [REFUSAL]?: ParleyError
      }
      if (typeof socket.on !== 'function') return // a browser's: nothing to read
      socket.on('unexpected-response', (_request, response) => {
        const chunks: Uint8Array[] = []
        let size = 0
        const refuse = (): void => {
          const bytes = new Uint8Array(Math.min(size, MAX_BODY_BYTES))
          let at = 0
          for (const chunk of chunks) {
            bytes.set(chunk.subarray(0, bytes.length - at), at)
            at += Math.min(chunk.length, bytes.length - at)
          }
          const body = new TextDecoder().decode(bytes)
          const header = response.headers['retry-after']
          const retryAfter = Array.isArray(header) ? header[0] : header
          socket[REFUSAL] = errorOfRefusal(response.statusCode ?? 0, body, retryAfter)
          socket.terminate() // closes it 1006, as it would have been without this listener
        }
        response.on('data', (chunk) => {
          if (size < MAX_BODY_BYTES) chunks.push(chunk)
          size += chunk.length
        })
        response.on('end', refuse)
        response.on('error', refuse)
      })
    }
  }
