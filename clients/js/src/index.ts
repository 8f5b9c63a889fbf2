export { connect, ParleySession } from './session.js'
export type { ConnectOptions, SessionEvents } from './session.js'
export {
  ERROR_CODES,
  CLIENT_ERROR_CODES,
  ParleyError,
  isErrorCode
} from './errors.js'
export type { ErrorCode, ClientErrorCode, ParleyErrorCode } from './errors.js'
export { MAX_MESSAGE_BYTES, MESSAGE_COMMAND, PACING } from './channel.js'
export { CLOSE_TIMEOUT_MS } from './frames.js'
export type { Command, Pacing } from './channel.js'
export { REASON_CODES } from './types.js'
export type * from './types.js'
