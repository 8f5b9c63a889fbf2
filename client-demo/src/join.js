// The way in: an invite link (its secret in the URL fragment, never sent to the server,
// exchanged here for a client token), a pasted token, or a session this browser has
// joined before. Tokens are kept in this browser's localStorage, by session, and never put
// in the address bar.
import { RestError, restClient } from './rest.js'
import { $, el, setText } from './util.js'

const STORE = 'parley.sessions.v1'

/** Decode a JWT's payload without verifying it (the server does that). */
export function tokenClaims (token) {
  try {
    const part = token.split('.')[1]
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=')
    const json = new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)))
    const claims = JSON.parse(json)
    return claims && typeof claims === 'object' ? claims : {}
  } catch {
    return {}
  }
}

/** Sessions this browser holds a token for: {sessionId: {token, title, user}}. */
export function savedSessions () {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE) || '{}')
    const now = Date.now() / 1000
    for (const [sid, s] of Object.entries(saved)) {
      if (!s?.token || (tokenClaims(s.token).exp ?? 0) <= now) delete saved[sid]
    }
    return saved
  } catch {
    return {}
  }
}

export function saveSession (sessionId, token, title = '') {
  const saved = savedSessions()
  saved[sessionId] = { token, title: title || saved[sessionId]?.title || '', user: tokenClaims(token).sub }
  localStorage.setItem(STORE, JSON.stringify(saved))
}

export function forgetSession (sessionId) {
  const saved = savedSessions()
  delete saved[sessionId]
  localStorage.setItem(STORE, JSON.stringify(saved))
}

const openSession = (sessionId) => { location.href = `${location.pathname}?session=${encodeURIComponent(sessionId)}` }

/** The invite secret in the address's fragment (`#invite=…`), or ''. */
export function inviteInFragment () {
  return new URLSearchParams(location.hash.slice(1)).get('invite') || ''
}

/** Trade an invite secret (or a whole invite link) for a token; opens its session. */
export async function redeemInvite (value) {
  const raw = value.trim()
  const secret = raw.includes('invite=') ? new URLSearchParams(raw.slice(raw.indexOf('#') + 1)).get('invite') || '' : raw
  const granted = await restClient('')('POST', '/api/v1/invites/exchange', { invite: secret })
  saveSession(granted.session_id, granted.token)
  history.replaceState(null, '', location.pathname) // the secret leaves the address bar
  openSession(granted.session_id)
}

export function showJoin (problem = '') {
  $('join').hidden = false
  setText($('join-error'), problem)
  renderSessions()

  $('invite-entry').addEventListener('submit', async (event) => {
    event.preventDefault()
    try {
      await redeemInvite(/** @type {HTMLInputElement} */ ($('invite-input')).value)
    } catch (error) {
      setText($('join-error'), error instanceof RestError ? error.message : String(error))
    }
  })

  $('join-form').addEventListener('submit', (event) => {
    event.preventDefault()
    const t = /** @type {HTMLTextAreaElement} */ ($('join-token')).value.trim()
    const claims = tokenClaims(t)
    if (!t || !claims.sub || !claims.sid) {
      setText($('join-error'), 'That does not look like a Parley client token.')
      return
    }
    saveSession(claims.sid, t)
    openSession(claims.sid)
  })
}

/** The sessions list: those this browser may open, and (asked with one of their tokens)
 * the other sessions their member belongs to, which need an invite link first. */
async function renderSessions () {
  const saved = savedSessions()
  const list = $('session-list')
  list.innerHTML = ''
  const entries = Object.entries(saved)
  for (const [sid, s] of entries) {
    list.append(el('li', { 'data-session': sid },
      el('a', { href: `?session=${encodeURIComponent(sid)}` }, s.title || `Session ${sid.slice(0, 8)}`),
      el('span', { class: 'muted' }, ` as ${s.user}`)))
  }
  setText($('session-list-empty'), entries.length ? '' : 'No sessions in this browser yet: open an invite link.')
  const [first] = entries
  if (!first) return
  try {
    const { sessions } = await restClient(first[1].token)('GET', '/api/v1/me/sessions')
    for (const s of sessions) {
      if (saved[s.id]) {
        saveSession(s.id, saved[s.id].token, s.title)
        const link = list.querySelector(`li[data-session="${CSS.escape(s.id)}"] a`)
        if (link && s.title) link.textContent = s.title
      } else {
        list.append(el('li', { 'data-session': s.id, class: 'muted' },
          `${s.title || s.id.slice(0, 8)} (${s.role}) — ask for an invite link to open it here`))
      }
    }
  } catch { /* the saved list stands on its own */ }
}
