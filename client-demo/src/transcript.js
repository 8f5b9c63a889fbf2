// The transcript: one row per entry, kept by id and updated in place as replies stream.
// People are shown by display name; statuses in words; replies and messages as Markdown.
//
// The work of an update is bounded by what changed, not by the history (review: every
// streamed token re-filled all 3,000 rows of a long session, 0.1-0.7 s a time): a row is
// filled again only when its entry or what it shows about it changed; the newest WINDOW
// entries are drawn at first ("Show earlier" adds more); and an entry's Markdown is
// rendered once its row comes near the visible part of the list.
import { copyText, markdownCut, renderMarkdown } from './markdown.js'
import { $, colorFor, el, initials, renderKeyed, setText } from './util.js'

/** Entries drawn at first, and added by each "Show earlier". */
export const WINDOW = 200
/** The newest entries, rendered at once (the visible part of the list, most of the time). */
const EAGER = 3

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
  const inputs = new WeakMap() // <li> -> what it was last filled from
  let shown = WINDOW
  const earlier = el('button', { type: 'button', id: 'transcript-earlier', class: 'small secondary', hidden: true })
  earlier.addEventListener('click', () => { shown += WINDOW; render() })
  list.before(earlier)

  // Markdown waits until its row is near the visible part of the list (plain text till then),
  // but for the newest entries.
  const waiting = new WeakMap() // .content -> text to render
  let eager = new Set() // ids of the newest entries
  const nearby = new IntersectionObserver((seen) => {
    for (const { target, isIntersecting } of seen) {
      if (!isIntersecting) continue
      nearby.unobserve(target)
      target.dataset.near = 'yes'
      const text = waiting.get(target)
      waiting.delete(target)
      if (text !== undefined) renderMarkdown(target, text)
    }
  }, { root: list, rootMargin: '800px 0px' })

  function showMarkdown (node, text, id) {
    if (eager.has(id)) node.dataset.near = 'yes'
    if (node.dataset.near === 'yes') { renderMarkdown(node, text); return }
    if (!waiting.has(node)) nearby.observe(node)
    waiting.set(node, text)
    setText(node, text.slice(0, markdownCut(text)))
  }

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
    // What the row shows: the restricted text for one who may read it (review: Copy gave
    // such a reader the placeholder).
    button('copy', 'Copy', (event) => copyText(app.restricted.get(id) ?? app.session.entry(id)?.content ?? '', event.currentTarget))
    button('pin', 'Pin', () => app.api.pin(id, !app.session.pins.includes(id)))
    // One new prompt per failed one (review: each click of a double click was a command,
    // and ran): its command id is the entry's, so the server answers a second Retry as the
    // first, and the button is off while the send waits.
    button('retry', 'Retry', async (event) => {
      const retry = /** @type {HTMLButtonElement} */ (event.currentTarget)
      if (retry.disabled) return
      retry.disabled = true
      try {
        await app.api.sendPrompt(app.session.entry(id)?.content || '', { id: `retry-${id}` })
      } finally {
        retry.disabled = false
      }
    })
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
    // Shared back from a side-thread (sidethread.css marks it), on every row however late
    // it is drawn (review: only rows on the page as the transcript changed were marked).
    if (entry.source) row.dataset.source = String(entry.source)
    else delete row.dataset.source
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
    else showMarkdown(c, text, id)
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

  /** Fill `row` unless nothing it shows changed since it was last filled. */
  function refresh (row, entry, positions, pinned, shared) {
    const id = String(entry.id)
    const now = [entry, positions.get(id), pinned.has(id), app.restricted.get(id),
      app.people.nameOf(String(entry.author ?? '')), shared]
    const before = inputs.get(row)
    if (before && before.every((value, i) => value === now[i])) return
    inputs.set(row, now)
    fill(row, entry, positions)
  }

  function render () {
    const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 60
    const all = app.session.transcript
    const entries = all.length > shown ? all.slice(all.length - shown) : all
    const positions = new Map(app.session.queue.map((q) => [q.id, q.position]))
    eager = new Set(entries.slice(-EAGER).map((e) => String(e.id)))
    // What every row depends on besides its entry.
    const pinned = new Set(app.session.pins)
    const shared = [app.me, app.ui.canPrompt, [...app.ui.capabilities].join(' ')].join('|')
    renderKeyed(list, rows, entries, (e) => String(e.id), make, (row, e) => refresh(row, e, positions, pinned, shared))
    const hidden = all.length - entries.length
    earlier.hidden = hidden === 0
    setText(earlier, hidden ? `Show earlier (${hidden.toLocaleString()} more)` : '')
    $('transcript-empty').hidden = all.length > 0
    if (stick) list.scrollTop = list.scrollHeight
  }
  return render
}
