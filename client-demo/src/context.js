// "What the model sees": the server's preview of this member's next model input
// (GET /api/v1/sessions/{id}/context). Asked only while its panel is open: when it opens,
// and REFRESH_MS after the last change of what the model is given (an entry added, a status
// changed; not the words of a reply as they stream), one request at a time. Each preview
// costs the server a build of the history (review: every open page asked every 500 ms
// while anything streamed, folded or not, and 30 pages made a reply 20 times slower).
import { $, el, setText, truncate } from './util.js'
import { sessionPath } from './rest.js'

export const REFRESH_MS = 500

export function mountContext (app) {
  const panel = $('context-panel')
  let timer = 0
  let busy = false
  let asked = '' // the state of the transcript the last preview was asked for
  let again = false // a change came while a preview was asked
  let waiting = '' // the state the timer waits to ask for

  /** What the model is given changes with: the entries, their statuses, pins and facts. */
  function state () {
    const entries = app.session.transcript
    let key = String(entries.length)
    for (const e of entries) key += `|${e.id}:${e.status}`
    return `${key}#${JSON.stringify(app.session.pins)}#${JSON.stringify(app.session.facts)}`
  }

  function schedule () {
    if (!panel.open) return
    if (busy) {
      again = true
      return
    }
    const now = state()
    if (now === asked || (timer && now === waiting)) return // streamed words change neither
    waiting = now
    clearTimeout(timer)
    timer = setTimeout(run, REFRESH_MS)
  }

  async function run () {
    timer = 0
    if (!panel.open) return
    busy = true
    again = false
    asked = state()
    try {
      await refresh()
    } finally {
      busy = false
      if (again) schedule()
    }
  }

  async function refresh () {
    let body
    try {
      body = await app.rest('GET', `${sessionPath(app.sessionId, '/context')}?user_id=${encodeURIComponent(app.me)}`)
    } catch (error) {
      $('context-error').textContent = `Preview unavailable: ${error.message}`
      return
    }
    $('context-error').textContent = ''
    show(body)
  }

  function show (body) {
    const count = (test) => body.excluded.filter((x) => test(x.reason)).length
    setText($('context-tokens'), `${body.tokens.toLocaleString()} of ${body.budget.toLocaleString()}`)
    // What the running and waiting entries (left out of ``tokens``) add once their runs end.
    const pending = Number(body.pending_tokens) || 0
    $('context-pending').dataset.count = String(pending)
    setText($('context-pending'), pending ? `+${pending.toLocaleString()} tokens` : 'nothing more')
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
    showItems(body)
    $('context').dataset.refreshed = String(Number($('context').dataset.refreshed || 0) + 1)
    app.emit('context', body)
  }

  // The items themselves: each message the model gets (whose words, folded repeats with
  // every author), the summary standing in for older turns, and what is left out and why.
  function showItems (body) {
    // By id, once (a lookup per left-out entry made a refresh quadratic in the history).
    const entries = new Map(app.session.transcript.map((e) => [String(e.id), e]))
    const list = $('context-items')
    list.innerHTML = ''
    if (body.summary) {
      const s = body.summary
      list.append(el('li', { class: 'ctx-item ctx-summary' },
        el('strong', {}, 'Summary'),
        el('span', { class: 'muted' }, ` of ${s.entries} earlier entries (${s.tokens} tokens)`)))
    }
    for (const m of body.messages) {
      const authors = (m.authors?.length ? m.authors : [m.author]).filter(Boolean)
      const who = m.role === 'assistant' ? 'Assistant' : authors.map((a) => app.people.nameOf(a)).join(', ') || m.role
      const item = el('li', { class: `ctx-item ctx-${m.role}${m.answering ? ' answering' : ''}` },
        el('span', { class: 'ctx-who' }, who),
        authors.length > 1 ? el('span', { class: 'ctx-tag' }, `said by ${authors.length}`) : '',
        m.answering ? el('span', { class: 'ctx-tag' }, 'to answer') : '',
        el('span', { class: 'ctx-tokens muted' }, `${m.tokens} tok`),
        el('span', { class: 'ctx-text' }, oneLine(m.content, 140)))
      list.append(item)
    }
    for (const x of body.excluded) {
      const entry = entries.get(String(x.entry_id))
      const who = entry ? (entry.kind === 'reply' ? 'Assistant' : app.people.nameOf(entry.author)) : 'An entry'
      list.append(el('li', { class: 'ctx-item ctx-excluded' },
        el('span', { class: 'ctx-who' }, who),
        el('span', { class: 'ctx-tag' }, leftOut(x.reason)),
        entry ? el('span', { class: 'ctx-text' }, oneLine(entry.content, 80)) : ''))
    }
    $('context-items-count').textContent = String(list.children.length)
  }

  app.session.on('transcript', schedule)
  app.session.doc.getArray('pins').observe(() => schedule())
  app.session.doc.getMap('facts').observe(() => schedule())
  panel.addEventListener('toggle', () => {
    if (panel.open && !busy && state() !== asked) run()
  })
  return () => {}
}

/** The start of `text` on one line, at most `n` characters (only its start is read). */
const oneLine = (text, n) => truncate(text.slice(0, 4 * n).replace(/\s+/g, ' '), n)

/** A reason an entry is left out, in words. */
export function leftOut (reason) {
  if (/^(near-)?duplicate of /.test(reason)) return 'folded: a repeat'
  if (reason.startsWith('summarised in')) return 'in the summary'
  if (reason === 'over budget') return 'left out: over budget'
  if (reason.startsWith('withheld')) return 'withheld from you'
  return reason
}
