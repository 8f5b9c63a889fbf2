// Parley browser demo, on the TypeScript SDK (@parley/client): the shared document, presence
// and commands all go through one `ParleySession`.
import { ParleyError, connect } from '@parley/client'
import './style.css'
import { mountSideThread } from './sidethread.js'

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id))

// ---------------------------------------------------------------------------------------
// Start-up: token, session and user from the URL (or the join form)
// ---------------------------------------------------------------------------------------

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
    const next = new URLSearchParams({ session: sid, token: t })
    const role = /** @type {HTMLSelectElement} */ ($('join-role')).value
    if (role) next.set('role', role)
    location.search = next.toString()
  })
}

// ---------------------------------------------------------------------------------------
// The session view
// ---------------------------------------------------------------------------------------

const ERROR_TEXT = {
  forbidden: 'Not allowed',
  busy: 'The assistant is busy',
  queue_full: 'Queue full',
  rate_limited: 'Slow down',
  invalid: 'Invalid request',
  too_large: 'Too long',
  unavailable: 'Server unavailable',
  conflict: 'Conflict',
  not_found: 'Not found',
  unauthenticated: 'Not signed in'
}

const CLOSE_TEXT = {
  4401: 'your token is invalid or has expired — get a new one',
  4403: 'you are not a member of this session (or were removed)',
  4404: 'this session does not exist or was deleted',
  4400: 'the server rejected a malformed frame',
  4429: 'too many refused commands',
  1009: 'a message was too large',
  1013: 'the connection fell behind; reconnecting',
  1001: 'the server is going away or the connection was idle; reconnecting'
}

function start ({ token, sessionId, me, role }) {
  $('app').hidden = false
  $('whoami').innerHTML = ''
  $('whoami').append(
    el('span', { class: 'muted' }, 'Signed in as '),
    el('strong', {}, me),
    role ? el('span', { class: 'role-chip' }, role) : ''
  )
  document.title = `Parley — ${me}`

  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`
  const session = connect({ url, sessionId, token, name: me })
  const meta = session.doc.getMap('meta') // the title: not covered by the SDK

  // -- state of the UI --------------------------------------------------------------------
  const ui = {
    canPrompt: role !== 'viewer',
    canMessage: role !== 'viewer',
    isOwner: role === 'owner',
    finalClose: null
  }

  // -- commands --------------------------------------------------------------------------
  /**
   * Run one SDK command; resolves with its ack, or with the error as a reply object
   * (`{type: 'error', id, code, message}`), which is also shown to the user.
   */
  async function send (kind, run) {
    try {
      return await run()
    } catch (error) {
      if (!(error instanceof ParleyError)) throw error
      if (error.code === 'forbidden' && kind === 'prompt') ui.canPrompt = false
      if (error.code === 'forbidden' && kind === 'message') ui.canMessage = false
      // A final close is reported once, by the close handler below.
      if (error.closeCode === null) showError(error.code, error.message, kind)
      updateComposer()
      return { type: 'error', id: error.commandId, code: error.code, message: error.message }
    }
  }

  const api = {
    sendPrompt: (text) => send('prompt', () => session.prompt(String(text))),
    sendMessage: (text) => send('message', () => session.message(String(text))),
    cancel: (promptId) => send('cancel', () => session.cancel(String(promptId))),
    setPolicy: (policy) => send('set_policy', () => session.setPolicy(String(policy))),
    session,
    doc: session.doc,
    provider: session.provider,
    get status () { return $('conn').dataset.state }
  }
  window.parleyDemo = api

  // -- connection state ------------------------------------------------------------------
  function setConn (state, text) {
    $('conn').dataset.state = state
    $('conn-text').textContent = text
    updateComposer()
  }
  session.on('state', (state) => {
    if (state === 'connected') setConn('connected', 'Connected')
    else if (state === 'connecting') setConn('connecting', 'Connecting…')
    else if (state === 'disconnected') setConn('disconnected', 'Disconnected — reconnecting…')
    else showClosed(session.closeError)
    renderPresence()
  })
  session.on('error', (error) => showError(error.code, error.message, null))
  // Why a socket closed before the provider reconnects (the SDK reports only final closes).
  session.provider.on('connection-close', (event) => {
    if (event && CLOSE_TEXT[event.code] && event.code !== 1001) {
      $('conn').title = `Closed ${event.code}: ${CLOSE_TEXT[event.code]}`
    }
  })

  function showClosed (error) {
    const code = error?.closeCode ?? null
    ui.finalClose = code ?? 'closed'
    const why = CLOSE_TEXT[code] || error?.message || 'the server closed the connection'
    const suffix = code === null ? '' : ` (close code ${code})`
    setConn('disconnected', code === null ? 'Disconnected' : `Disconnected (${code})`)
    showError('closed', `${why[0].toUpperCase()}${why.slice(1)}${suffix}; not reconnecting — reload the page to try again.`, null, true)
  }

  // -- errors ----------------------------------------------------------------------------
  function showError (code, message, cmdType, sticky = false) {
    const title = ERROR_TEXT[code] || (code === 'closed' ? 'Disconnected' : code)
    const what = cmdType ? ` (${cmdType.replace('_', ' ')})` : ''
    const item = el('div', { class: 'error', 'data-code': code },
      el('strong', {}, `${title}${what}: `),
      el('span', { class: 'error-message' }, message || ''),
      el('code', { class: 'error-code' }, code)
    )
    const close = el('button', { type: 'button', class: 'link', 'aria-label': 'Dismiss this error' }, '×')
    close.addEventListener('click', () => item.remove())
    item.append(close)
    const box = $('errors')
    box.append(item)
    while (box.children.length > 4) box.firstElementChild.remove()
    if (!sticky && code !== 'forbidden') setTimeout(() => item.remove(), 12000)
  }

  // -- composer --------------------------------------------------------------------------
  const text = /** @type {HTMLTextAreaElement} */ ($('composer-text'))
  const promptBtn = /** @type {HTMLButtonElement} */ ($('send-prompt'))
  const messageBtn = /** @type {HTMLButtonElement} */ ($('send-message'))

  function updateComposer () {
    const connected = $('conn').dataset.state === 'connected'
    promptBtn.disabled = !ui.canPrompt || !connected
    messageBtn.disabled = !ui.canMessage || !connected
    text.disabled = !ui.canPrompt && !ui.canMessage
    let note = ''
    if (!ui.canPrompt && !ui.canMessage) note = 'You can watch this session but not write to it (viewer).'
    else if (!ui.canPrompt) note = 'Your role does not allow prompting the assistant.'
    else if (!connected) note = ui.finalClose ? 'Disconnected.' : 'Waiting for the connection…'
    $('composer-note').textContent = note
    if (!ui.canPrompt) promptBtn.title = 'Your role does not allow prompts'
  }

  async function submit (kind) {
    const value = text.value.trim()
    if (!value) { text.focus(); return }
    const reply = await (kind === 'prompt' ? api.sendPrompt(value) : api.sendMessage(value))
    if (reply.type === 'ack' && text.value.trim() === value) text.value = ''
    setTyping(false)
  }
  $('composer').addEventListener('submit', (event) => { event.preventDefault(); submit('prompt') })
  mountSideThread({ session, composer: text, showError }) // "Ask privately" and its panel
  messageBtn.addEventListener('click', () => submit('message'))
  text.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault()
      if (!promptBtn.disabled) submit('prompt')
    }
  })

  // typing indicator (awareness)
  let typingTimer = 0
  function setTyping (value) {
    clearTimeout(typingTimer)
    session.setTyping(value)
    if (value) typingTimer = setTimeout(() => setTyping(false), 2500)
  }
  text.addEventListener('input', () => setTyping(text.value.length > 0))
  text.addEventListener('blur', () => setTyping(false))

  // policy
  const policySel = /** @type {HTMLSelectElement} */ ($('policy'))
  policySel.disabled = role === 'viewer'
  policySel.addEventListener('change', async () => {
    const reply = await api.setPolicy(policySel.value)
    if (reply.type !== 'ack') policySel.value = session.policy || 'queue'
  })

  // -- rendering -------------------------------------------------------------------------
  const rows = new Map() // entry id -> <li>
  let frame = 0
  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; renderAll() })
  }
  session.on('transcript', schedule)
  session.on('queue', schedule)
  meta.observe(schedule)
  session.on('presence', () => renderPresence())

  function renderAll () {
    renderMeta()
    renderTranscript()
    renderQueue()
    scheduleContext()
  }

  // -- the context preview: what the server would give the model for me, now ----------------
  let contextTimer = 0
  let contextBusy = false
  function scheduleContext () {
    clearTimeout(contextTimer)
    contextTimer = setTimeout(refreshContext, 400) // once the transcript settles
  }

  async function refreshContext () {
    if (contextBusy) return scheduleContext()
    contextBusy = true
    try {
      const url = `/api/v1/sessions/${encodeURIComponent(sessionId)}/context?user_id=${encodeURIComponent(me)}`
      const response = await fetch(url, { headers: { Authorization: `Bearer ${token}` } })
      const body = await response.json()
      if (!response.ok) {
        $('context-error').textContent = body.message || `HTTP ${response.status}`
        return
      }
      $('context-error').textContent = ''
      const count = (test) => body.excluded.filter((x) => test(x.reason)).length
      setText($('context-tokens'), `${body.tokens.toLocaleString()} of ${body.budget.toLocaleString()}`)
      setText($('context-messages'), String(body.messages.length))
      const counts = {
        // merged repeats, plus pasted blocks and replies given as references
        'context-folded': count((r) => /^(near-)?duplicate of /.test(r)) +
          Object.values(body.notes).filter((n) => !/duplicate of an earlier/.test(n)).length,
        'context-summarised': count((r) => r.startsWith('summarised in')),
        'context-over': count((r) => r === 'over budget'),
        'context-withheld': count((r) => r.startsWith('withheld'))
      }
      for (const [id, n] of Object.entries(counts)) {
        $(id).dataset.count = String(n)
        setText($(id), String(n))
      }
    } catch (error) {
      $('context-error').textContent = `Preview unavailable: ${error}`
    } finally {
      contextBusy = false
    }
  }

  function renderMeta () {
    const title = meta.get('title')
    $('session-title').textContent = title ? `· ${title}` : ''
    const policy = session.policy
    if (policy && document.activeElement !== policySel) policySel.value = policy
  }

  function renderTranscript () {
    const list = $('transcript')
    const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 60
    const seen = new Set()
    let prev = null
    const entries = session.transcript
    for (const entry of entries) {
      const id = String(entry.id)
      seen.add(id)
      let row = rows.get(id)
      if (!row) {
        row = buildRow()
        rows.set(id, row)
      }
      fillRow(row, entry)
      const want = prev ? prev.nextSibling : list.firstChild
      if (want !== row) list.insertBefore(row, want)
      prev = row
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) { row.remove(); rows.delete(id) }
    }
    $('transcript-empty').hidden = entries.length > 0
    if (stick) list.scrollTop = list.scrollHeight
  }

  function buildRow () {
    const row = el('li', { class: 'entry' })
    row.innerHTML = `
      <div class="entry-head">
        <span class="avatar" aria-hidden="true"></span>
        <span class="author"></span>
        <span class="kind"></span>
        <span class="status"></span>
        <span class="seq muted"></span>
        <span class="time muted"></span>
        <span class="spacer"></span>
      </div>
      <div class="content"></div>
      <div class="reason muted"></div>`
    return row
  }

  function fillRow (row, entry) {
    const kind = entry.kind || ''
    const author = String(entry.author ?? '')
    const status = entry.status || ''
    const id = String(entry.id)
    const content = entry.content
    const reason = entry.reason || ''
    const seq = entry.seq
    const created = entry.created_at
    row.className = `entry kind-${kind} is-${status}${author === me && kind !== 'reply' ? ' mine' : ''}`
    row.dataset.id = id
    row.dataset.kind = kind
    row.dataset.status = status
    row.dataset.author = author
    setText(row.querySelector('.avatar'), (author[0] || '?').toUpperCase())
    row.querySelector('.avatar').style.background = colorFor(author)
    setText(row.querySelector('.author'), author + (author === me && kind !== 'reply' ? ' (you)' : ''))
    setText(row.querySelector('.kind'), kind === 'reply' ? 'assistant' : kind)
    const st = row.querySelector('.status')
    setText(st, status)
    st.className = `status status-${status}`
    setText(row.querySelector('.seq'), seq != null ? `#${seq}` : '')
    setText(row.querySelector('.time'), created ? new Date(Number(created)).toLocaleTimeString() : '')
    const c = row.querySelector('.content')
    setText(c, content)
    c.classList.toggle('streaming', status === 'streaming')
    setText(row.querySelector('.reason'), reason)
    const head = row.querySelector('.entry-head')
    let btn = head.querySelector('button.cancel')
    const cancellable = kind === 'prompt' && (status === 'queued' || status === 'running') &&
      (author === me || ui.isOwner)
    if (cancellable && !btn) {
      btn = el('button', { type: 'button', class: 'cancel small secondary' }, 'Cancel')
      btn.addEventListener('click', () => api.cancel(row.dataset.id))
      head.append(btn)
    } else if (!cancellable && btn) {
      btn.remove()
    }
    if (btn) btn.setAttribute('aria-label', `Cancel prompt #${seq ?? ''} by ${author}`)
  }

  function promptText (id) {
    return session.entry(id)?.content || ''
  }

  function renderQueue () {
    const list = $('queue')
    list.innerHTML = ''
    const queue = session.queue
    for (const { id, author, position } of queue) {
      const li = el('li', { class: 'queue-item', 'data-id': id, 'data-author': author },
        el('span', { class: 'position', 'aria-label': `Position ${position}` }, String(position)),
        el('span', { class: 'avatar small', style: `background:${colorFor(author)}`, 'aria-hidden': 'true' }, (author[0] || '?').toUpperCase()),
        el('span', { class: 'queue-body' },
          el('span', { class: 'author' }, author + (author === me ? ' (you)' : '')),
          el('span', { class: 'snippet muted' }, truncate(promptText(id), 60))
        )
      )
      if (author === me || ui.isOwner) {
        const b = el('button', { type: 'button', class: 'cancel small secondary', 'aria-label': `Cancel queued prompt at position ${position}` }, 'Cancel')
        b.addEventListener('click', () => api.cancel(id))
        li.append(b)
      }
      list.append(li)
    }
    $('queue-count').textContent = queue.length ? String(queue.length) : ''
    $('queue-empty').hidden = queue.length > 0
  }

  function renderPresence () {
    const users = new Map() // user id -> {typing, self}
    for (const peer of session.presence) {
      const name = peer.self ? me : (peer.userId ?? peer.name)
      if (!name) continue
      const u = users.get(name) || { typing: false, self: false, tabs: 0 }
      u.typing = u.typing || peer.typing
      u.self = u.self || peer.self
      u.tabs += 1
      users.set(name, u)
    }
    const list = $('presence')
    list.innerHTML = ''
    const names = [...users.keys()].sort((a, b) => (users.get(b).self - users.get(a).self) || a.localeCompare(b))
    for (const name of names) {
      const u = users.get(name)
      list.append(el('li', { class: `presence-item${u.typing ? ' typing' : ''}`, 'data-user': name },
        el('span', { class: 'avatar small', style: `background:${colorFor(name)}`, 'aria-hidden': 'true' }, (name[0] || '?').toUpperCase()),
        el('span', { class: 'author' }, name + (u.self ? ' (you)' : '')),
        u.typing ? el('span', { class: 'typing-label' }, 'typing…') : ''
      ))
    }
    $('presence-count').textContent = String(users.size)
  }

  setConn(session.state === 'connected' ? 'connected' : 'connecting', session.state === 'connected' ? 'Connected' : 'Connecting…')
  renderAll()
  renderPresence()
}

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

function el (tag, attrs = {}, ...children) {
  const node = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v)
  for (const child of children) if (child !== '' && child != null) node.append(child)
  return node
}

function setText (node, value) {
  if (node.textContent !== value) node.textContent = value
}

function truncate (s, n) {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s
}

function colorFor (name) {
  let h = 0
  for (const ch of String(name)) h = (h * 31 + ch.codePointAt(0)) % 360
  return `hsl(${h} 55% 45%)`
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
    start({ token, sessionId, me, role: params.get('role') || '' })
  }
}
