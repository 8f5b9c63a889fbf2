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

/**
 * Keep `token` for its session, unless this browser is signed in there as another member:
 * then the user chooses, and the sign-in they keep is saved. Resolves with the token to
 * use. Review: a `?token=` link from bob replaced alice's saved sign-in without a word,
 * her token was lost, and her next "Ask privately" went into bob's side-thread.
 */
export async function adoptToken (sessionId, token) {
  const saved = savedSessions()[sessionId]
  const user = tokenClaims(token).sub
  if (saved && saved.user !== user && !(await askToSwitch(saved, String(user)))) return saved.token
  saveSession(sessionId, token)
  return token
}

/** Ask whether to leave `saved`'s sign-in for `user`'s; resolves true to switch. */
function askToSwitch (saved, user) {
  return new Promise((resolve) => {
    const keep = el('button', { type: 'button', id: 'switch-keep' }, `Stay signed in as ${saved.user}`)
    const take = el('button', { type: 'button', id: 'switch-take', class: 'secondary' }, `Switch to ${user}`)
    const box = el('main', { id: 'switch', class: 'join' },
      el('section', { class: 'card', role: 'alertdialog', 'aria-labelledby': 'switch-heading', 'aria-describedby': 'switch-text' },
        el('h1', { id: 'switch-heading' }, 'Sign in as someone else?'),
        el('p', { id: 'switch-text' },
          `This link signs you in to “${saved.title || 'this session'}” as ${user}. `,
          `This browser is signed in to it as ${saved.user}. `,
          `Switch only if you are ${user}: what you write and ask privately after switching is theirs.`),
        el('div', { class: 'row' }, keep, take)))
    $('join').before(box)
    const answer = (value) => { box.remove(); resolve(value) }
    keep.addEventListener('click', () => answer(false))
    take.addEventListener('click', () => answer(true))
    keep.focus()
  })
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
  history.replaceState(null, '', location.pathname) // the secret leaves the address bar
  await adoptToken(granted.session_id, granted.token)
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

  $('join-form').addEventListener('submit', async (event) => {
    event.preventDefault()
    const t = /** @type {HTMLTextAreaElement} */ ($('join-token')).value.trim()
    const claims = tokenClaims(t)
    if (!t || !claims.sub || !claims.sid) {
      setText($('join-error'), 'That does not look like a Parley client token.')
      return
    }
    await adoptToken(claims.sid, t)
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
