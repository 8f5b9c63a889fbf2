// Documents the assistant can search in this session (members allowed to attach them:
// `manage_session`). A text file is read in the browser and posted, readable by every
// built-in role and the custom roles members hold now.
import { sessionPath } from './rest.js'
import { $, cutText, el, setText } from './util.js'

const MAX_CHARS = 200_000 // the server's default PARLEY_MAX_DOCUMENT_CHARS
const BUILT_IN_ROLES = ['owner', 'editor', 'viewer']

export function mountDocuments (app) {
  let loaded = false

  async function load () {
    try {
      const { documents } = await app.rest('GET', sessionPath(app.sessionId, '/documents'))
      const list = $('documents')
      list.innerHTML = ''
      for (const d of documents) list.append(el('li', { 'data-id': d.id }, d.title))
      setText($('documents-empty'), documents.length ? '' : 'No documents yet.')
    } catch (error) {
      setText($('documents-empty'), `Documents unavailable: ${error.message}`)
    }
  }

  $('document-form').addEventListener('submit', async (event) => {
    event.preventDefault()
    const file = /** @type {HTMLInputElement} */ ($('document-file')).files?.[0]
    if (!file) { setText($('document-note'), 'Choose a text file first.'); return }
    const text = await file.text()
    if (text.length > MAX_CHARS) { setText($('document-note'), `Too long: at most ${MAX_CHARS.toLocaleString()} characters.`); return }
    // Every built-in role, and the custom roles members hold now (review: only the roles
    // held at upload, so a viewer added later could not read it). The page cannot list
    // custom roles nobody holds: the roles table is the admin's.
    const roles = [...new Set([...BUILT_IN_ROLES, ...app.members.map((m) => m.role)])]
    try {
      await app.rest('POST', sessionPath(app.sessionId, '/documents'), { title: cutText(file.name, 500), text, readers: { users: [], roles } })
      setText($('document-note'), `Attached “${file.name}”.`)
      $('document-form').reset()
      load()
    } catch (error) {
      setText($('document-note'), error.message)
    }
  })

  return function render () {
    const may = app.ui.capabilities.has('manage_session')
    $('documents-section').hidden = !app.ui.known
    $('document-form').hidden = !may
    if (app.ui.known && !loaded) { loaded = true; load() }
  }
}
