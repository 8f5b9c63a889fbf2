// Parley browser client, on the TypeScript SDK (@parley/client): the shared document,
// presence and commands all go through one `ParleySession`; who may do what comes from the
// server (the member's own row over REST), never from the URL.
//
// Each panel is a module whose `mountX(app)` returns its render function; `PANELS` lists
// them. A new panel is one import and one line there.
import { ParleyError, connect } from '@parley/client'
import 'highlight.js/styles/github.css' // first: style.css darkens some of its colours
import './style.css'
import { CLOSE_TEXT, closedText, showError } from './errors.js'
import { mountComposer } from './composer.js'
import { mountContext } from './context.js'
import { mountDocuments } from './documents.js'
import { adoptToken, inviteInFragment, redeemInvite, saveSession, savedSessions, showJoin, tokenClaims } from './join.js'
import { mountKnowledge } from './knowledge.js'
import { markdownWork } from './markdown.js'
import { mountPresence } from './presence.js'
import { mountQueue } from './queue.js'
import { mountSettings } from './settings.js'
import { mountTranscript } from './transcript.js'
import { peopleDirectory } from './people.js'
import { restClient, sessionPath } from './rest.js'
import { $, el, setText } from './util.js'
import { mountSideThread } from './sidethread.js'

export { tokenClaims }

// Panels: each `mount(app)` returns `render()`, called when the document changes.
const PANELS = [
  mountTranscript, mountQueue, mountPresence, mountComposer, mountContext,
  mountSettings, mountKnowledge, mountDocuments
]

function start ({ token, sessionId, me }) {
  $('app').hidden = false
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`
  const session = connect({ url, sessionId, token, name: me })
  const meta = session.doc.getMap('meta') // the title: not covered by the SDK
  const listeners = new Map()

  const ui = {
    known: false, // until the member's own row has been read
    role: '',
    displayName: '',
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
    members: [],
    // Restricted text this member may read (the shared document shows a placeholder):
    // sent to this socket alone, by entry id.
    restricted: new Map(),
    rest: restClient(token),
    people: peopleDirectory(),
    showError,
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
      if (error.code === 'forbidden') readMembership() // what may I do now?
      schedule()
      return { type: 'error', id: error.commandId, code: error.code, message: error.message, closeCode: error.closeCode }
    }
  }

  app.api = {
    sendPrompt: (text, options) => send('prompt', () => session.prompt(String(text), options)),
    sendMessage: (text, options) => send('message', () => session.message(String(text), options)),
    cancel: (promptId) => send('cancel', () => session.cancel(String(promptId))),
    setPolicy: (policy) => send('set_policy', () => session.setPolicy(String(policy))),
    pin: (entryId, pinned = true) => send('pin', () => session.pin(String(entryId), pinned)),
    setFact: (key, value) => send('set_fact', () => session.setFact(String(key), value === null ? null : String(value))),
    session,
    doc: session.doc,
    provider: session.provider,
    app,
    markdownWork, // characters parsed and highlighted so far (markdown.js)
    get status () { return $('conn').dataset.state }
  }
  window.parleyDemo = app.api

  const renders = PANELS.map((mount) => mount(app))
  mountSideThread({ session, composer: $('composer-text'), showError }) // "Ask privately" and its panel

  function renderAll () {
    renderMeta()
    for (const render of renders) render()
  }

  // -- who I am and who the others are, as the server holds them now ---------------------
  // Read over REST at start and after each (re)connect (what the server said while the
  // socket was down is lost), and again after a `forbidden` (a role changed where this
  // socket was not told); in between, the server's `member` frames say who joined, left,
  // changed role or was renamed (review: a role and names read once went stale). One read
  // at a time: one asked for meanwhile runs once after it, so no trigger makes a storm.
  let reading = null
  let readAgain = false
  let heard = null // member frames heard while a read runs: newer than it, maybe

  function readMembership () {
    if (reading) {
      readAgain = true
      return reading
    }
    reading = (async () => {
      do {
        readAgain = false
        await readOnce()
      } while (readAgain)
      reading = null
    })()
    return reading
  }

  async function readOnce () {
    heard = []
    try {
      const [mine, list] = await Promise.allSettled([
        app.rest('GET', sessionPath(sessionId, '/me')),
        app.rest('GET', sessionPath(sessionId, '/members'))
      ])
      if (mine.status === 'fulfilled') {
        takeMine(mine.value)
      } else if (!ui.known) {
        const error = mine.reason
        showError(error.code || 'unavailable', `Could not read your role: ${error.message}`, null)
      }
      if (list.status === 'fulfilled') { // else names fall back to user ids
        app.members = list.value.members
        app.people.setAll(app.members)
      }
      if (mine.status === 'fulfilled') app.people.set(me, mine.value.display_name)
    } finally {
      const late = heard
      heard = null
      for (const frame of late) takeMember(frame) // maybe newer than what was read: kept
    }
    ui.known = true
    renderWho()
    renderAll()
  }

  /** The member's own row (from `GET …/me` or a `member` frame): what the page lets them do. */
  function takeMine (mine) {
    ui.role = mine.role
    ui.displayName = mine.display_name
    ui.capabilities = new Set(mine.capabilities)
    ui.canPrompt = ui.capabilities.has('prompt')
    ui.canMessage = ui.capabilities.has('post_message')
  }

  /** A `member` frame: how one member stands now (`role` null: no longer a member). */
  function takeMember (frame) {
    heard?.push(frame)
    const rest = app.members.filter((m) => m.user_id !== frame.user_id)
    app.members = frame.role === null ? rest : [...rest, frame].sort((a, b) => a.user_id.localeCompare(b.user_id))
    if (frame.user_id === me && frame.role !== null) takeMine(frame)
    app.people.set(frame.user_id, frame.display_name)
    renderWho()
    schedule()
  }

  function renderWho () {
    const who = $('whoami')
    who.innerHTML = ''
    who.append(
      el('span', { class: 'muted' }, 'Signed in as '),
      el('strong', {}, app.people.nameOf(me)),
      ui.role ? el('span', { class: 'role-chip', id: 'role-chip', title: 'Your role in this session' }, ui.role) : ''
    )
    if (ui.known) who.dataset.role = ui.role
    document.title = `Parley — ${app.people.nameOf(me)}`
  }

  // -- connection state ------------------------------------------------------------------
  function setConn (state, text) {
    $('conn').dataset.state = state
    $('conn-text').textContent = text
    schedule()
  }
  session.on('state', (state) => {
    if (state === 'connected') {
      setConn('connected', 'Connected')
      readMembership()
    } else if (state === 'connecting') setConn('connecting', 'Connecting…')
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
    setConn('disconnected', 'Disconnected')
    showError(error?.code || 'closed', closedText(code, error?.message), 'connection closed', true)
  }

  let savedTitle = ''
  function renderMeta () {
    const title = meta.get('title')
    setText($('session-title'), title ? `· ${title}` : '')
    setText($('app-heading'), title ? `Shared session: ${title}` : 'Shared session')
    // Saved when it changes (not on every frame: each save reads and decodes every token).
    if (title && String(title) !== savedTitle) {
      savedTitle = String(title)
      saveSession(sessionId, token, savedTitle)
    }
  }

  let frame = 0
  function schedule () {
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; renderAll() })
  }
  session.on('transcript', schedule)
  session.on('restricted', (item) => { app.restricted.set(String(item.entry_id), String(item.text)); schedule() })
  session.on('queue', schedule)
  meta.observe(schedule)
  session.doc.getArray('pins').observe(schedule)
  session.doc.getMap('facts').observe(schedule)
  session.on('presence', schedule)
  session.on('member', takeMember)
  app.people.onChange(() => { renderWho(); schedule() })

  setConn(session.state === 'connected' ? 'connected' : 'connecting', session.state === 'connected' ? 'Connected' : 'Connecting…')
  renderWho()
  readMembership()
}

// ---------------------------------------------------------------------------------------
// boot (last, so every constant above is initialised)
// ---------------------------------------------------------------------------------------

async function boot () {
  const invite = inviteInFragment()
  if (invite) {
    try {
      await redeemInvite(invite)
      return
    } catch (error) {
      history.replaceState(null, '', location.pathname)
      showJoin(`This invite link does not work: ${error.message}`)
      return
    }
  }
  const params = new URLSearchParams(location.search)
  let token = (params.get('token') || '').trim()
  let sessionId = params.get('session') || ''
  if (token) {
    // A token in the address (an old-style link): kept in this browser, then taken out of
    // the address bar so it is not bookmarked or shared by accident.
    const sid = tokenClaims(token).sid || ''
    if (sid && sessionId && sid !== sessionId) {
      // Review: the address's session won, and the token (valid elsewhere only) replaced
      // this browser's sign-in for it. Nothing is saved from such a link.
      history.replaceState(null, '', `${location.pathname}?session=${encodeURIComponent(sessionId)}`)
      showJoin('This link\'s token is for another session than the one it names: nothing was changed. Open an invite link instead.')
      return
    }
    sessionId = sessionId || sid
    if (sessionId) {
      history.replaceState(null, '', `${location.pathname}?session=${encodeURIComponent(sessionId)}`)
      token = await adoptToken(sessionId, token) // asks first if it signs in as someone else
    }
  } else if (sessionId) {
    token = savedSessions()[sessionId]?.token || ''
  }
  if (!token || !sessionId) {
    showJoin(sessionId && !token ? 'This browser has no sign-in for that session: open an invite link.' : '')
    return
  }
  const claims = tokenClaims(token)
  start({ token, sessionId, me: typeof claims.sub === 'string' ? claims.sub : 'me' })
}

boot()
