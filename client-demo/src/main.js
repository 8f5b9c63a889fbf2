// Parley browser demo, on the TypeScript SDK (@parley/client): the shared document, presence
// and commands all go through one `ParleySession`; who may do what comes from the server
// (the member list over REST), never from the URL.
//
// Each panel is a module with `mountX(app)` returning its render function; `PANELS` below
// lists them. A new panel is one import and one line there.
import { ParleyError, connect } from '@parley/client'
import './style.css'
import { CLOSE_TEXT, showError } from './errors.js'
import { mountComposer } from './composer.js'
import { mountContext } from './context.js'
import { mountPresence } from './presence.js'
import { mountQueue } from './queue.js'
import { mountTranscript } from './transcript.js'
import { peopleDirectory } from './people.js'
import { restClient, sessionPath } from './rest.js'
import { $, el, setText } from './util.js'

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

function showJoinForm (problem = '') {
  const params = new URLSearchParams(location.search)
  $('join').hidden = false
  $('join-error').textContent = problem
  $('join-session').value = params.get('session') || ''
  $('join-form').addEventListener('submit', (event) => {
    event.preventDefault()
    const t = /** @type {HTMLTextAreaElement} */ ($('join-token')).value.trim()
    const claims = tokenClaims(t)
    const sid = /** @type {HTMLInputElement} */ ($('join-session')).value.trim() || claims.sid
    if (!t || !claims.sub) {
      $('join-error').textContent = 'That does not look like a Parley client token.'
      return
    }
    if (!sid) {
      $('join-error').textContent = 'The token names no session; enter the session id.'
      return
    }
    location.search = new URLSearchParams({ session: sid, token: t }).toString()
  })
}

// Panels: each `mount(app)` returns `render()`, called when the document changes.
const PANELS = [mountTranscript, mountQueue, mountPresence, mountComposer, mountContext]

function start ({ token, sessionId, me }) {
  $('app').hidden = false
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`
  const session = connect({ url, sessionId, token, name: me })
  const meta = session.doc.getMap('meta') // the title: not covered by the SDK
  const listeners = new Map()

  const ui = {
    known: false, // until the member's own row has been read
    role: '',
    capabilities: new Set(),
    canPrompt: false,
    canMessage: false,
    finalClose: null,
    mayCancel (author) {
      return this.capabilities.has('cancel_any') || (author === me && this.capabilities.has('cancel_own'))
    }
  }

  const app = {
    session,
    sessionId,
    me,
    ui,
    rest: restClient(token),
    people: peopleDirectory(),
    api: null,
    on (event, fn) {
      if (!listeners.has(event)) listeners.set(event, new Set())
      listeners.get(event).add(fn)
    },
    emit (event, ...args) {
      for (const fn of listeners.get(event) || []) fn(...args)
    }
  }

  /**
   * Run one SDK command; resolves with its ack, or with the error as a reply object
   * (`{type: 'error', id, code, message}`), which is also shown to the user.
   */
  async function send (kind, run) {
    try {
      return await run()
    } catch (error) {
      if (!(error instanceof ParleyError)) throw error
      // A final close is reported once, by the close handler below.
      if (error.closeCode === null) showError(error.code, error.message, kind)
      renderAll()
      return { type: 'error', id: error.commandId, code: error.code, message: error.message }
    }
  }

  app.api = {
    sendPrompt: (text) => send('prompt', () => session.prompt(String(text))),
    sendMessage: (text) => send('message', () => session.message(String(text))),
    cancel: (promptId) => send('cancel', () => session.cancel(String(promptId))),
    setPolicy: (policy) => send('set_policy', () => session.setPolicy(String(policy))),
    session,
    doc: session.doc,
    provider: session.provider,
    app,
    get status () { return $('conn').dataset.state }
  }
  window.parleyDemo = app.api

  const renders = PANELS.map((mount) => mount(app))

  function renderAll () {
    renderMeta()
    for (const render of renders) render()
  }

  // -- who I am: my role and capabilities, from the server --------------------------------
  async function loadMe () {
    try {
      const { members } = await app.rest('GET', sessionPath(sessionId, '/members'))
      for (const m of members) app.people.learn(m.user_id, m.display_name)
      const mine = members.find((m) => m.user_id === me)
      if (!mine) throw new Error('you are not in the member list')
      ui.role = mine.role
      ui.capabilities = new Set(mine.capabilities)
    } catch (error) {
      showError('unavailable', `Could not read your role: ${error.message}`, null)
      ui.role = ''
      ui.capabilities = new Set()
    }
    ui.canPrompt = ui.capabilities.has('prompt')
    ui.canMessage = ui.capabilities.has('post_message')
    ui.known = true
    renderWho()
    renderAll()
  }

  function renderWho () {
    $('whoami').innerHTML = ''
    $('whoami').append(
      el('span', { class: 'muted' }, 'Signed in as '),
      el('strong', {}, app.people.nameOf(me)),
      ui.role ? el('span', { class: 'role-chip', id: 'role-chip' }, ui.role) : ''
    )
    if (ui.known) $('whoami').dataset.role = ui.role
    document.title = `Parley — ${app.people.nameOf(me)}`
    policySel.disabled = !ui.capabilities.has('manage_session')
  }

  // -- connection state ------------------------------------------------------------------
  function setConn (state, text) {
    $('conn').dataset.state = state
    $('conn-text').textContent = text
    renderAll()
  }
  session.on('state', (state) => {
    if (state === 'connected') setConn('connected', 'Connected')
    else if (state === 'connecting') setConn('connecting', 'Connecting…')
    else if (state === 'disconnected') setConn('disconnected', 'Connection lost — reconnecting…')
    else showClosed(session.closeError)
  })
  session.on('error', (error) => showError(error.code, error.message, null))
  session.provider.on('connection-close', (event) => {
    if (event && CLOSE_TEXT[event.code] && event.code !== 1001) {
      $('conn').title = `Closed: ${CLOSE_TEXT[event.code]}`
    }
  })

  function showClosed (error) {
    const code = error?.closeCode ?? null
    ui.finalClose = code ?? 'closed'
    const why = CLOSE_TEXT[code] || error?.message || 'the server closed the connection'
    setConn('disconnected', 'Disconnected')
    showError('closed', `${why[0].toUpperCase()}${why.slice(1)}; not reconnecting — reload the page to try again.`, null, true)
  }

  // -- scheduling policy (owners) ----------------------------------------------------------
  const policySel = /** @type {HTMLSelectElement} */ ($('policy'))
  policySel.disabled = true
  policySel.addEventListener('change', async () => {
    const reply = await app.api.setPolicy(policySel.value)
    if (reply.type !== 'ack') policySel.value = session.policy || 'queue'
  })

  function renderMeta () {
    const title = meta.get('title')
    setText($('session-title'), title ? `· ${title}` : '')
    const policy = session.policy
    if (policy && document.activeElement !== policySel) policySel.value = policy
  }

  let frame = 0
  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; renderAll() })
  }
  session.on('transcript', schedule)
  session.on('queue', schedule)
  meta.observe(schedule)
  session.on('presence', schedule)
  app.people.onChange(() => { renderWho(); schedule() })

  setConn(session.state === 'connected' ? 'connected' : 'connecting', session.state === 'connected' ? 'Connected' : 'Connecting…')
  renderWho()
  loadMe()
}

// ---------------------------------------------------------------------------------------
// boot (last, so every constant above is initialised)
// ---------------------------------------------------------------------------------------

const params = new URLSearchParams(location.search)
const token = (params.get('token') || '').trim()

if (!token) {
  showJoinForm()
} else {
  const claims = tokenClaims(token)
  const sessionId = params.get('session') || claims.sid
  const me = typeof claims.sub === 'string' ? claims.sub : 'me'
  if (!sessionId) {
    showJoinForm('This token names no session; add the session id.')
  } else {
    start({ token, sessionId, me })
  }
}
