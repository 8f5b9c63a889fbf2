// The transcript: one row per entry, kept by id and updated in place as replies stream.
// People are shown by display name; statuses in words; replies and messages as Markdown.
import { copyText, renderMarkdown } from './markdown.js'
import { $, colorFor, el, initials, renderKeyed, setText } from './util.js'

const ORDINAL = (n) => {
  const teen = n % 100 >= 11 && n % 100 <= 13
  return `${n}${teen ? 'th' : ({ 1: 'st', 2: 'nd', 3: 'rd' }[n % 10] || 'th')}`
}

/** What a person reads for an entry's status ('' : nothing to say). */
export function statusWords (entry, position) {
  const { kind, status } = entry
  if (kind === 'message') return ''
  if (kind === 'reply') {
    return { streaming: 'writing…', done: '', failed: 'failed', cancelled: 'stopped', interrupted: 'interrupted' }[status] ?? status
  }
  if (kind === 'prompt') {
    if (status === 'queued') return position ? (position === 1 ? 'waiting · next in line' : `waiting · ${ORDINAL(position)} in line`) : 'waiting'
    return { running: 'being answered', done: '', failed: 'failed', cancelled: 'cancelled', interrupted: 'interrupted' }[status] ?? status
  }
  return status
}

const KIND_WORDS = { prompt: 'asked the AI', message: 'to the team', reply: '', tool: 'used a tool' }

export function mountTranscript (app) {
  const list = $('transcript')
  const rows = new Map() // entry id -> <li>

  function make (entry) {
    const row = el('li', { class: 'entry', tabindex: '-1' })
    row.innerHTML = `
      <div class="entry-head">
        <span class="avatar" aria-hidden="true"></span>
        <span class="author"></span>
        <span class="kind"></span>
        <span class="status"></span>
        <time class="time muted"></time>
        <span class="spacer"></span>
        <span class="actions"></span>
      </div>
      <div class="content"></div>
      <div class="reason muted"></div>`
    const actions = row.querySelector('.actions')
    const id = String(entry.id)
    const button = (cls, label, onclick) => {
      const b = el('button', { type: 'button', class: `${cls} small secondary`, hidden: true }, label)
      b.addEventListener('click', onclick)
      actions.append(b)
    }
    button('copy', 'Copy', (event) => copyText(app.session.entry(id)?.content || '', event.currentTarget))
    button('pin', 'Pin', () => app.api.pin(id, !app.session.pins.includes(id)))
    button('retry', 'Retry', () => app.api.sendPrompt(app.session.entry(id)?.content || ''))
    button('cancel', 'Cancel', () => app.api.cancel(id))
    return row
  }

  function fill (row, entry, positions) {
    const kind = entry.kind || ''
    const author = String(entry.author ?? '')
    const status = entry.status || ''
    const id = String(entry.id)
    const mine = author === app.me && kind !== 'reply'
    const pinned = app.session.pins.includes(id)
    row.className = `entry kind-${kind} is-${status}${mine ? ' mine' : ''}${pinned ? ' pinned' : ''}`
    row.dataset.id = id
    row.dataset.kind = kind
    row.dataset.status = status
    row.dataset.author = author
    const name = kind === 'reply' ? 'Assistant' : app.people.nameOf(author)
    const avatar = row.querySelector('.avatar')
    setText(avatar, kind === 'reply' ? 'AI' : initials(name))
    avatar.style.background = kind === 'reply' ? '#5b21b6' : colorFor(author)
    setText(row.querySelector('.author'), name + (mine ? ' (you)' : ''))
    row.querySelector('.author').title = kind === 'reply' ? `model: ${author}` : author
    setText(row.querySelector('.kind'), KIND_WORDS[kind] ?? kind)
    const st = row.querySelector('.status')
    setText(st, statusWords(entry, positions.get(id)))
    st.className = `status status-${status}`
    const time = row.querySelector('.time')
    if (entry.created_at) {
      const at = new Date(Number(entry.created_at))
      setText(time, at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }))
      time.dateTime = at.toISOString()
    }
    const c = row.querySelector('.content')
    // What only some members may read: its text, for one of them (review: a reader saw
    // the placeholder only).
    const text = app.restricted.get(id) ?? entry.content
    c.classList.toggle('restricted', app.restricted.has(id))
    if (kind === 'tool') setText(c, text)
    else renderMarkdown(c, text)
    c.classList.toggle('streaming', status === 'streaming')
    setText(row.querySelector('.reason'), entry.reason || '')

    const show = (cls, visible, label) => {
      const b = row.querySelector(`button.${cls}`)
      b.hidden = !visible
      if (label) b.setAttribute('aria-label', label)
      return b
    }
    const who = mine ? 'your' : `${name}'s`
    show('copy', kind === 'reply' && status !== 'streaming' && entry.content !== '', `Copy the assistant's reply`)
    const pin = show('pin', app.ui.capabilities.has('pin') && kind !== 'tool' && status !== 'streaming', `${pinned ? 'Unpin' : 'Pin'} ${who} ${kind}`)
    setText(pin, pinned ? 'Unpin' : 'Pin')
    pin.setAttribute('aria-pressed', String(pinned))
    show('retry', kind === 'prompt' && mine && app.ui.canPrompt && ['failed', 'interrupted'].includes(status), 'Ask this again')
    show('cancel', kind === 'prompt' && (status === 'queued' || status === 'running') && app.ui.mayCancel(author), `Cancel ${who} prompt`)
  }

  return function render () {
    const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 60
    const entries = app.session.transcript
    const positions = new Map(app.session.queue.map((q) => [q.id, q.position]))
    renderKeyed(list, rows, entries, (e) => String(e.id), make, (row, e) => fill(row, e, positions))
    $('transcript-empty').hidden = entries.length > 0
    if (stick) list.scrollTop = list.scrollHeight
  }
}
