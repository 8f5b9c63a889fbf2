// A private side-thread beside the shared session (docs/threads.md): "Ask privately" sends
// the composer's text to the model in a thread only this member sees; the side panel shows
// the thread as it streams (its own Yjs document, synced over the thread's socket by a
// second stock provider), and "Share to session" posts the (editable) text into the
// session as this member's message. Self-contained: main.js only calls mountSideThread.
import { ParleyError } from '@parley/client'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import './sidethread.css'
import { closedText } from './errors.js'
import { cutText } from './util.js'

const REBUILT = 4410 // the server's document does not cover ours (a thread stored before its document was): sync a new Y.Doc
// Final closes (y-websocket does not reconnect after a 44xx): each shown, by its error code.
const RETRYING = 'Not connected to this thread yet; retrying…'
const FINAL = { 4400: 'invalid', 4401: 'unauthenticated', 4403: 'forbidden', 4404: 'not_found', 4429: 'rate_limited' }

const make = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag)
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value)
  node.append(...children)
  return node
}

/**
 * @param {{ session: import('@parley/client').ParleySession, composer: HTMLTextAreaElement,
 *           showError: (code: string, message: string, what: string) => void }} options
 */
export function mountSideThread ({ session, composer, showError }) {
  let thread = null // the side-thread as the server last sent it (its JSON frames)
  let synced = null // its document: { id, doc, provider }

  // The thread's turns come from its document (a reply's text grows in it as it is
  // written); the session's JSON frames say when a run settled, for the draft.
  function follow (threadId) {
    if (synced?.id === threadId) return
    synced?.provider.destroy()
    synced?.doc.destroy()
    synced = null
    if (threadId === null) return
    const base = session.provider
    const doc = new Y.Doc()
    const provider = new WebsocketProvider(
      `${base.serverUrl}/${encodeURIComponent(base.roomname)}/threads`, threadId, doc,
      { params: base.params, disableBc: true } // as the SDK's: no presence across tabs
    )
    provider.on('connection-close', (event) => {
      if (synced?.doc !== doc) return
      if (event?.code === REBUILT) {
        synced.id = null // start again from an empty document
        follow(threadId)
      } else if (FINAL[event?.code]) {
        // Review: a 4429 (one connection too many) here was heard by nobody: the panel
        // stayed empty while the thread was answered on the server.
        const said = closedText(event.code, event.reason)
        showError(FINAL[event.code], said, 'private thread')
        note.textContent = said
      } else if (!provider.wsconnected) {
        // A socket refused at the upgrade (one connection too many, say: review RK-2) is
        // a bare 1006 to a browser, and is retried: say so until it syncs.
        note.textContent = RETRYING
      }
    })
    provider.on('sync', (isSynced) => {
      if (isSynced && note.textContent === RETRYING) note.textContent = ''
    })
    doc.getArray('turns').observeDeep(() => render())
    synced = { id: threadId, doc, provider }
  }

  const ask = make('button', {
    type: 'button',
    id: 'ask-privately',
    class: 'secondary',
    'aria-label': 'Ask privately (only you see the question and the answer)'
  }, 'Ask privately')
  composer.form?.querySelector('.composer-row')?.prepend(ask)

  const turns = make('ol', { id: 'side-thread-turns', class: 'side-turns', 'aria-live': 'polite' })
  const draft = make('textarea', {
    id: 'side-thread-draft',
    rows: '4',
    'aria-label': 'What to share with the session (edit it first)'
  })
  const summarise = make('button', { type: 'button', id: 'side-thread-summarise', class: 'secondary' }, 'Summarise')
  const share = make('button', { type: 'button', id: 'side-thread-share' }, 'Share to session')
  const note = make('p', { id: 'side-thread-note', class: 'muted note', role: 'status' })
  const panel = make('section', { id: 'side-thread', class: 'card side-thread', 'aria-labelledby': 'side-thread-heading', hidden: '' },
    make('h2', { id: 'side-thread-heading' }, 'Private thread'),
    make('p', { class: 'muted note' }, 'Only you see this. Share what helps.'),
    turns, draft,
    make('div', { class: 'side-actions' }, summarise, share),
    note
  )
  ;(document.querySelector('.sidebar') ?? document.body).prepend(panel)

  async function run (what, command) {
    try {
      return await command()
    } catch (error) {
      if (!(error instanceof ParleyError)) throw error
      note.textContent = error.message
      showError(error.code, error.message, what)
      return null
    }
  }

  function render () {
    panel.hidden = thread === null
    if (thread === null) return
    const shown = synced === null ? [] : synced.doc.getArray('turns').toJSON()
    turns.replaceChildren(...shown.map((turn) => make('li', {
      class: `side-turn kind-${turn.kind}`,
      'data-kind': turn.kind,
      'data-status': turn.status,
      'data-id': turn.id
    }, turn.summarise && turn.kind === 'prompt' ? '(asked for a summary to share)' : turn.content)))
    summarise.disabled = share.disabled = thread.running
    ask.disabled = thread.running
  }

  session.on('thread', (frame) => {
    if (frame.type === 'thread' && (thread === null || frame.thread.id === thread.id)) {
      const before = thread
      thread = frame.thread
      const last = thread.turns[thread.turns.length - 1]
      const settled = before?.running && !thread.running
      if (settled && last?.kind === 'reply' && last.status === 'done') {
        draft.value = last.text // the newest answer (or summary), ready to edit and share
      }
    } else if (frame.type === 'thread_deleted' && frame.thread_id === thread?.id) {
      thread = null
    }
    follow(thread?.id ?? null)
    render()
  })

  ask.addEventListener('click', async () => {
    const text = composer.value.trim()
    if (!text) { composer.focus(); return }
    note.textContent = ''
    if (thread === null || thread.status !== 'open') {
      const opened = await run('ask privately', () => session.openThread({ title: cutText(text, 80) }))
      if (opened === null) return
      thread = { id: opened.thread_id, turns: [], running: false, status: 'open' }
      follow(thread.id)
    }
    const asked = await run('ask privately', () => session.threadPrompt(thread.id, text))
    if (asked !== null && composer.value.trim() === text) composer.value = ''
    render()
  })

  summarise.addEventListener('click', () => {
    if (thread !== null) run('summarise', () => session.threadSummarise(thread.id))
  })

  share.addEventListener('click', async () => {
    const text = draft.value.trim()
    if (thread === null || !text) { draft.focus(); return }
    const posted = await run('share', () => session.threadShare(thread.id, { text }))
    if (posted !== null) {
      draft.value = ''
      note.textContent = 'Shared with the session.'
    }
  })
}
