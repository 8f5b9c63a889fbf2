// Parley browser demo: the stock `yjs` + `y-websocket` client for the shared document,
// and Parley's JSON commands on the same socket.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import './style.css'

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
  unauthenticated: 'Not signed in',
  not_connected: 'Not connected'
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

  const doc = new Y.Doc()
  const transcript = doc.getArray('transcript')
  const queue = doc.getArray('queue')
  const meta = doc.getMap('meta')

  const wsBase = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws/sessions`
  const provider = new WebsocketProvider(wsBase, sessionId, doc, { params: { token } })
  const awareness = provider.awareness
  awareness.setLocalState({ user: { name: me }, typing: false })

  // -- state of the UI --------------------------------------------------------------------
  const ui = {
    canPrompt: role !== 'viewer',
    canMessage: role !== 'viewer',
    isOwner: role === 'owner',
    finalClose: null
  }

  // -- JSON commands on the provider's socket -------------------------------------------------
  let counter = 0
  /** @type {Map<string, {cmd: object, resolve: (r: object) => void}>} */
  const pending = new Map()
  const hooked = new WeakSet()

  function hookSocket (ws) {
    if (!ws || hooked.has(ws)) return
    hooked.add(ws)
    // y-websocket decodes every frame as binary; keep Parley's text frames away from it.
    const binaryHandler = ws.onmessage
    if (typeof binaryHandler === 'function') {
      ws.onmessage = function (event) {
        if (typeof event.data === 'string') return
        return binaryHandler.call(this, event)
      }
    }
    ws.addEventListener('message', (event) => {
      if (typeof event.data !== 'string') return
      let reply
      try {
        reply = JSON.parse(event.data)
      } catch {
        return
      }
      handleReply(reply)
    })
    ws.addEventListener('open', () => {
      // A command whose reply was lost with the old socket: resend with the same id; the
      // server answers with the original ack and stores nothing twice.
      for (const { cmd } of pending.values()) ws.send(JSON.stringify(cmd))
    })
  }

  function handleReply (reply) {
    const waiting = reply.id != null ? pending.get(reply.id) : undefined
    if (waiting) pending.delete(reply.id)
    if (reply.type === 'error') {
      const cmdType = waiting ? waiting.cmd.type : null
      if (reply.code === 'forbidden' && cmdType === 'prompt') ui.canPrompt = false
      if (reply.code === 'forbidden' && cmdType === 'message') ui.canMessage = false
      showError(reply.code, reply.message, cmdType)
      updateComposer()
    }
    if (waiting) waiting.resolve(reply)
  }

  /** Send one command; resolves with its ack or error reply. */
  function send (fields) {
    const cmd = { ...fields, id: `${me}-${Date.now().toString(36)}-${(++counter).toString(36)}` }
    const ws = provider.ws
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      const reply = { type: 'error', id: cmd.id, code: 'not_connected', message: 'Not connected to the server yet; try again in a moment.' }
      showError(reply.code, reply.message, cmd.type)
      return Promise.resolve(reply)
    }
    return new Promise((resolve) => {
      pending.set(cmd.id, { cmd, resolve })
      ws.send(JSON.stringify(cmd))
    })
  }

  const api = {
    sendPrompt: (text) => send({ type: 'prompt', text: String(text) }),
    sendMessage: (text) => send({ type: 'message', text: String(text) }),
    cancel: (promptId) => send({ type: 'cancel', prompt_id: String(promptId) }),
    setPolicy: (policy) => send({ type: 'set_policy', policy: String(policy) }),
    doc,
    provider,
    get status () { return $('conn').dataset.state }
  }
  window.parleyDemo = api

  // -- connection state ------------------------------------------------------------------
  function setConn (state, text) {
    $('conn').dataset.state = state
    $('conn-text').textContent = text
    updateComposer()
  }
  provider.on('status', ({ status }) => {
    hookSocket(provider.ws)
    if (status === 'connected') setConn('connected', 'Connected')
    else if (status === 'connecting') setConn('connecting', 'Connecting…')
    else setConn('disconnected', 'Disconnected — reconnecting…')
    renderPresence()
  })
  provider.on('sync', (synced) => {
    if (synced && provider.wsconnected) setConn('connected', 'Connected')
  })
  provider.on('connection-close', (event) => {
    if (event && CLOSE_TEXT[event.code] && event.code !== 1001) {
      $('conn').title = `Closed ${event.code}: ${CLOSE_TEXT[event.code]}`
    }
  })
  provider.on('connection-error', () => { /* reported through status and close */ })
  provider.on('closed', ({ code, reason }) => {
    ui.finalClose = code
    const why = CLOSE_TEXT[code] || reason || 'the server closed the connection'
    setConn('disconnected', `Disconnected (${code})`)
    showError('closed', `${why[0].toUpperCase()}${why.slice(1)} (close code ${code}); not reconnecting — reload the page to try again.`, null, true)
  })
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
    if (awareness.getLocalState()?.typing !== value) awareness.setLocalStateField('typing', value)
    if (value) typingTimer = setTimeout(() => setTyping(false), 2500)
  }
  text.addEventListener('input', () => setTyping(text.value.length > 0))
  text.addEventListener('blur', () => setTyping(false))

  // policy
  const policySel = /** @type {HTMLSelectElement} */ ($('policy'))
  policySel.disabled = role === 'viewer'
  policySel.addEventListener('change', async () => {
    const reply = await api.setPolicy(policySel.value)
    if (reply.type !== 'ack') policySel.value = meta.get('policy') || 'queue'
  })

  // -- rendering -------------------------------------------------------------------------
  const rows = new Map() // entry id -> <li>
  let frame = 0
  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; renderAll() })
  }
  transcript.observeDeep(schedule)
  queue.observeDeep(schedule)
  meta.observe(schedule)
  awareness.on('change', () => renderPresence())

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
    const policy = meta.get('policy')
    if (policy && document.activeElement !== policySel) policySel.value = policy
  }

  function entryField (entry, key) {
    const v = entry.get(key)
    return v instanceof Y.Text ? v.toString() : v
  }

  function renderTranscript () {
    const list = $('transcript')
    const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 60
    const seen = new Set()
    let prev = null
    transcript.forEach((entry) => {
      if (!(entry instanceof Y.Map)) return
      const id = String(entry.get('id'))
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
    })
    for (const [id, row] of rows) {
      if (!seen.has(id)) { row.remove(); rows.delete(id) }
    }
    $('transcript-empty').hidden = transcript.length > 0
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
    const kind = entryField(entry, 'kind') || ''
    const author = String(entryField(entry, 'author') ?? '')
    const status = entryField(entry, 'status') || ''
    const id = String(entryField(entry, 'id'))
    const content = entryField(entry, 'content') ?? ''
    const reason = entryField(entry, 'reason') || ''
    const seq = entryField(entry, 'seq')
    const created = entryField(entry, 'created_at')
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
    for (const entry of transcript) {
      if (entry instanceof Y.Map && entry.get('id') === id) return entryField(entry, 'content') || ''
    }
    return ''
  }

  function renderQueue () {
    const list = $('queue')
    list.innerHTML = ''
    queue.forEach((item, index) => {
      const get = (k) => (item instanceof Y.Map ? item.get(k) : item?.[k])
      const id = String(get('id'))
      const author = String(get('author') ?? '')
      const li = el('li', { class: 'queue-item', 'data-id': id, 'data-author': author },
        el('span', { class: 'position', 'aria-label': `Position ${index + 1}` }, String(index + 1)),
        el('span', { class: 'avatar small', style: `background:${colorFor(author)}`, 'aria-hidden': 'true' }, (author[0] || '?').toUpperCase()),
        el('span', { class: 'queue-body' },
          el('span', { class: 'author' }, author + (author === me ? ' (you)' : '')),
          el('span', { class: 'snippet muted' }, truncate(promptText(id), 60))
        )
      )
      if (author === me || ui.isOwner) {
        const b = el('button', { type: 'button', class: 'cancel small secondary', 'aria-label': `Cancel queued prompt at position ${index + 1}` }, 'Cancel')
        b.addEventListener('click', () => api.cancel(id))
        li.append(b)
      }
      list.append(li)
    })
    $('queue-count').textContent = queue.length ? String(queue.length) : ''
    $('queue-empty').hidden = queue.length > 0
  }

  function renderPresence () {
    const users = new Map() // user id -> {typing, self}
    const local = awareness.clientID
    awareness.getStates().forEach((state, clientId) => {
      if (!state) return
      const self = clientId === local
      const name = self ? me : (state.parley?.user_id ?? state.user?.name)
      if (!name) return
      const u = users.get(name) || { typing: false, self: false, tabs: 0 }
      u.typing = u.typing || !!state.typing
      u.self = u.self || self
      u.tabs += 1
      users.set(name, u)
    })
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

  hookSocket(provider.ws) // the first socket was created in the constructor
  setConn(provider.wsconnected ? 'connected' : 'connecting', provider.wsconnected ? 'Connected' : 'Connecting…')
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
