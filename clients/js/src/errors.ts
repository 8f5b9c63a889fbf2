import type { Command } from './channel.js'

/**
 * Errors are part of the API: every refusal of a command, and every close of the socket
 * that the client cannot recover from, rejects with a `ParleyError` carrying a stable `code`.
 */

/** The server's error codes (README's error table; `session/errors.py` `ErrorCode`). */
export const ERROR_CODES = [
  'invalid',
  'too_large',
  'unknown_command',
  'unsupported_media_type',
  'not_acceptable',
  'method_not_allowed',
  'bad_event_id',
  'bad_request',
  'reserved_name',
  'unauthenticated',
  'forbidden',
  'not_found',
  'conflict',
  'busy',
  'queue_full',
  'thread_closed',
  'thread_limit',
  'thread_runs_busy',
  'session_full',
  'restricted_share',
  'rate_limited',
  'unavailable',
  'quota_exceeded',
  'too_many_streams',
  'provider_error',
  'internal'
] as const

export type ErrorCode = (typeof ERROR_CODES)[number]

/**
 * Codes the client itself gives: `closed` — the session was closed (by `close()`, or by the
 * server with a final close code) before the command was acknowledged; `aborted` — the
 * caller's `AbortSignal` gave the command up (it is not sent again).
 */
export const CLIENT_ERROR_CODES = ['closed', 'aborted'] as const

export type ClientErrorCode = (typeof CLIENT_ERROR_CODES)[number]

export type ParleyErrorCode = ErrorCode | ClientErrorCode

export class ParleyError extends Error {
  override readonly name = 'ParleyError'
  /** The stable code (`forbidden`, `queue_full`, …). */
  readonly code: ParleyErrorCode
  /** The id of the command this error answers, or null (an error of no command). */
  readonly commandId: string | null
  /** The WebSocket close code, when the error is the socket's close. */
  readonly closeCode: number | null
  /** The command as it was sent, when it was given up (`aborted`): `session.resend(command)`
   * sends it again by its id, which the server answers with its first ack. */
  readonly command: Readonly<Command> | null
  /** The HTTP status, when the error is a refused upgrade's (429, 503, 401, …). */
  readonly status: number | null
  /** The seconds the server asked to wait before trying again (`Retry-After`), or null. */
  readonly retryAfter: number | null

  constructor (
    code: ParleyErrorCode,
    message: string,
    options: {
      commandId?: string | null
      closeCode?: number | null
      command?: Command
      status?: number | null
      retryAfter?: number | null
    } = {}
  ) {
    super(message)
    this.code = code
    this.commandId = options.commandId ?? null
    this.closeCode = options.closeCode ?? null
    this.status = options.status ?? null
    this.retryAfter = options.retryAfter ?? null
    this.command = options.command === undefined ? null : Object.freeze({ ...options.command })
  }
}

export const isErrorCode = (value: unknown): value is ErrorCode =>
  typeof value === 'string' && (ERROR_CODES as readonly string[]).includes(value)

/**
 * The final close codes (44xx: a reconnect cannot fix them; `session/closes.py`) and the
 * error each reports; a 4429 that says when to come back is not final (`refusalOfClose`).
 */
const FINAL_CLOSES: Readonly<Record<number, ErrorCode>> = {
  4400: 'invalid',
  4401: 'unauthenticated',
  4403: 'forbidden',
  4404: 'not_found',
  4429: 'rate_limited'
}

/** Closes after which a reason that says when (JSON `retry_after_ms`) is waited out. */
const WAITED_CLOSES: Readonly<Record<number, ErrorCode>> = {
  1013: 'unavailable', // fell behind, or the database failed
  4429: 'rate_limited' // limits ignored again and again: final only when it says no wait
}

/**
 * A close whose reason says when to come back (a 1013's or a 4429's JSON
 * `{"code", "retry_after_ms", "message"}`, `server/http/retry_hint.py`), as the refusal
 * it stands for, with `retryAfter` in seconds; else null (review FX69: a 4429 that says
 * when is a "come back then", not the end).
 */
export const refusalOfClose = (code: number, reason: string): ParleyError | null => {
  const kind = WAITED_CLOSES[code]
  if (kind === undefined || !reason.startsWith('{')) return null
  let told: { code?: unknown, retry_after_ms?: unknown, message?: unknown }
  try {
    told = JSON.parse(reason)
  } catch {
    return null
  }
  const waitMs = told?.retry_after_ms
  if (typeof waitMs !== 'number' || !Number.isFinite(waitMs) || waitMs < 0) return null
  const message = typeof told.message === 'string' ? told.message : reason
  return new ParleyError(isErrorCode(told.code) ? told.code : kind, message, {
    closeCode: code,
    retryAfter: waitMs / 1000
  })
}

/** The error a final close reports (its reason is the message). */
export const errorForClose = (code: number, reason: string): ParleyError =>
  new ParleyError(FINAL_CLOSES[code] ?? 'closed', reason || `socket closed with ${code}`, {
    closeCode: code
  })
