// "Pinned & facts": what every model call is given besides the conversation. Facts are
// one line each; members who may pin edit both (through the SDK's commands).
import { $, el, setText, truncate } from './util.js'

export function mountKnowledge (app) {
  const factForm = $('fact-form')
  factForm.addEventListener('submit', async (event) => {
    event.preventDefault()
    const key = /** @type {HTMLInputElement} */ ($('fact-key'))
    const value = /** @type {HTMLInputElement} */ ($('fact-value'))
    if (!key.value.trim() || !value.value.trim()) return
    const reply = await app.api.setFact(key.value.trim(), value.value.trim())
    if (reply.type === 'ack') { key.value = ''; value.value = ''; key.focus() }
  })

  // What the panel shows, as last drawn: it is drawn again only when that changes, not at
  // every change of the page (review: emptied and rebuilt at each streamed batch of any
  // reply, its Unpin, Remove and Edit were gone before a click or a key landed).
  let drawn = ''

  return function render () {
    const canEdit = app.ui.capabilities.has('pin')
    factForm.hidden = !canEdit
    const facts = Object.entries(app.session.facts)
    const pins = app.session.pins.map((id) => [id, pinText(id)])
    const shown = JSON.stringify([canEdit, facts, pins])
    if (shown === drawn) return
    drawn = shown
    const factList = $('facts')
    factList.innerHTML = ''
    for (const [key, value] of facts) {
      const li = el('li', { class: 'fact', 'data-key': key },
        el('span', { class: 'fact-key' }, key), el('span', { class: 'fact-value' }, value))
      if (canEdit) {
        li.append(
          el('button', { type: 'button', class: 'small secondary', 'aria-label': `Edit fact ${key}`, onclick: () => {
            $('fact-key').value = key
            $('fact-value').value = value
            $('fact-value').focus()
          } }, 'Edit'),
          el('button', { type: 'button', class: 'small secondary', 'aria-label': `Remove fact ${key}`, onclick: () => app.api.setFact(key, null) }, 'Remove'))
      }
      factList.append(li)
    }
    const pinList = $('pins')
    pinList.innerHTML = ''
    for (const [id, [who, text]] of pins) {
      const li = el('li', { class: 'pin', 'data-id': id }, el('span', { class: 'pin-text' }, `${who}: ${text}`))
      if (canEdit) li.append(el('button', { type: 'button', class: 'small secondary', 'aria-label': `Unpin ${who}'s entry`, onclick: () => app.api.pin(id, false) }, 'Unpin'))
      pinList.append(li)
    }
    setText($('knowledge-empty'), facts.length || pins.length ? '' : 'Nothing pinned and no facts yet.')
  }

  /** Who wrote pinned entry `id`, and the start of the text this member reads of it (a
   * restricted one for its reader, not the placeholder). */
  function pinText (id) {
    const entry = app.session.entry(id)
    const who = !entry ? '' : entry.kind === 'reply' ? 'Assistant' : app.people.nameOf(entry.author)
    return [who, truncate(app.restricted.get(id) ?? (entry?.content || '(not visible)'), 70)]
  }
}
