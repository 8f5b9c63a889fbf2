// "What the model sees": the server's preview of this member's next model input
// (GET /api/v1/sessions/{id}/context). Refreshed at most every REFRESH_MS while the
// transcript changes: a throttle, not a debounce, so a streaming reply cannot hold it back
// forever, and the change that ends a reply is always followed by one more refresh.
import { $, setText } from './util.js'
import { sessionPath } from './rest.js'

export const REFRESH_MS = 500

export function mountContext (app) {
  let timer = 0
  let busy = false
  let dirty = false

  function schedule () {
    dirty = true
    if (!timer && !busy) timer = setTimeout(run, REFRESH_MS)
  }

  async function run () {
    timer = 0
    busy = true
    dirty = false
    try {
      await refresh()
    } finally {
      busy = false
      if (dirty) schedule()
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
    $('context').dataset.refreshed = String(Number($('context').dataset.refreshed || 0) + 1)
    app.emit('context', body)
  }

  app.session.on('transcript', schedule)
  schedule()
  return () => {}
}
