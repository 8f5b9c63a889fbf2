// Errors shown above the composer, in words a person reads.
import { $, el } from './util.js'

export const ERROR_TEXT = {
  forbidden: 'Not allowed',
  busy: 'The assistant is busy',
  queue_full: 'Queue full',
  rate_limited: 'Slow down',
  invalid: 'Invalid request',
  too_large: 'Too long',
  unavailable: 'Server unavailable',
  conflict: 'Conflict',
  not_found: 'Not found',
  unauthenticated: 'Not signed in',
  // Every code of the api docs' error table (tests/server/test_demo_error_text.py): a
  // refusal is never titled with its machine code (review RH-1).
  session_full: 'Session full',
  quota_exceeded: 'Token quota reached',
  provider_error: 'The AI service failed',
  unknown_command: 'Not understood by the server',
  thread_closed: 'Side-thread closed',
  thread_limit: 'Too many side-threads',
  thread_runs_busy: 'Too many side-thread replies at once',
  restricted_share: 'Cannot share restricted text',
  too_many_streams: 'Too many open streams',
  bad_request: 'Bad request',
  reserved_name: 'Name reserved for the assistant or the server',
  bad_event_id: 'Unknown event',
  unsupported_media_type: 'Unsupported request format',
  not_acceptable: 'Unsupported response format',
  method_not_allowed: 'Not allowed for this address',
  internal: 'Server error'
}

export const CLOSE_TEXT = {
  4401: 'your sign-in is invalid or has expired — ask for a new invite link',
  4403: 'you are not a member of this session (or were removed), or this page\'s origin is not allowed',
  4404: 'this session does not exist or was deleted',
  4400: 'the server rejected a malformed frame',
  4429: 'too many refused commands or frames',
  1009: 'a message was too large',
  1013: 'the connection fell behind; reconnecting',
  1001: 'the server is going away or the connection was idle; reconnecting'
}

/**
 * What a final close says: the server's reason and the close code, then what the code
 * usually means. Review: one fixed sentence per code read "too many refused commands" for
 * "too many connections of this user (16)" (4429 had several causes; 4403 has).
 */
export function closedText (code, reason) {
  const said = reasonText(reason)
  const usual = CLOSE_TEXT[code]
  const head = said || usual || 'the server closed the connection'
  const parts = [`${head[0].toUpperCase()}${head.slice(1)}`]
  if (code !== null && code !== undefined) parts.push(` (close code ${code}${said && usual ? `: ${usual}` : ''})`)
  return `${parts.join('')}; not reconnecting — reload the page to try again.`
}

/**
 * A close reason's words: the `message` of one in JSON (`{"code", "retry_after_ms",
 * "message"}`: a 1013's, or a 4429's that says when to come back), else the reason itself.
 */
function reasonText (reason) {
  const said = String(reason || '').trim()
  if (!said.startsWith('{')) return said
  try {
    const told = JSON.parse(said)
    return typeof told?.message === 'string' ? told.message.trim() : said
  } catch {
    return said
  }
}

export function showError (code, message, cmdType, sticky = false) {
  const title = ERROR_TEXT[code] || (code === 'closed' ? 'Disconnected' : code)
  const what = cmdType ? ` (${cmdType.replace('_', ' ')})` : ''
  const item = el('div', { class: 'error', 'data-code': code },
    el('strong', {}, `${title}${what}: `),
    el('span', { class: 'error-message' }, message || '')
  )
  const close = el('button', { type: 'button', class: 'link', 'aria-label': 'Dismiss this error' }, '×')
  close.addEventListener('click', () => item.remove())
  item.append(close)
  const box = $('errors')
  box.append(item)
  while (box.children.length > 4) box.firstElementChild.remove()
  if (!sticky && code !== 'forbidden') setTimeout(() => item.remove(), 12000)
}
