// The Queue panel: who waits for the AI, in order (the prompts' text is in the conversation,
// shown once). Rendered by key, so a Cancel button stays the same node while replies stream
// (a click is a mouse-down and a mouse-up on it).
import { $, colorFor, el, initials, renderKeyed, setText } from './util.js'

export function mountQueue (app) {
  const list = $('queue')
  const items = new Map() // prompt id -> <li>

  function make ({ id }) {
    const li = el('li', { class: 'queue-item', 'data-id': id },
      el('span', { class: 'position' }),
      el('span', { class: 'avatar small', 'aria-hidden': 'true' }),
      el('span', { class: 'queue-body' }, el('span', { class: 'author' }))
    )
    const cancel = el('button', { type: 'button', class: 'cancel small secondary' }, 'Cancel')
    cancel.addEventListener('click', () => app.api.cancel(id))
    li.append(cancel)
    return li
  }

  function fill (li, { id, author, position }) {
    const name = app.people.nameOf(author)
    li.dataset.author = author
    const pos = li.querySelector('.position')
    setText(pos, String(position))
    pos.setAttribute('aria-label', `Position ${position}`)
    const avatar = li.querySelector('.avatar')
    setText(avatar, initials(name))
    avatar.style.background = colorFor(author)
    setText(li.querySelector('.author'), name + (author === app.me ? ' (you)' : ''))
    const cancel = li.querySelector('button.cancel')
    cancel.hidden = !app.ui.mayCancel(author)
    cancel.setAttribute('aria-label', `Cancel ${author === app.me ? 'your' : `${name}'s`} waiting prompt at position ${position}`)
  }

  return function render () {
    const queue = app.session.queue
    renderKeyed(list, items, queue, (q) => q.id, make, fill)
    $('queue-count').textContent = queue.length ? String(queue.length) : ''
    $('queue-empty').hidden = queue.length > 0
  }
}
