// "Here now": the people connected, by display name (the member list's, kept current by the
// server: the name stamped on a presence state may be one its member has given up since).
// Only this client while the connection to the server is down (the others' states are what
// the server last relayed).
import { $, colorFor, el, initials } from './util.js'

export function mountPresence (app) {
  const list = $('presence')
  return function render () {
    const connected = app.session.state === 'connected'
    const users = new Map() // user id -> {typing, self}
    for (const peer of app.session.presence) {
      if (!peer.self && !connected) continue
      const id = peer.self ? app.me : (peer.userId ?? peer.name)
      if (!id) continue
      const u = users.get(id) || { typing: false, self: false }
      u.typing = u.typing || (!peer.self && peer.typing)
      u.self = u.self || peer.self
      users.set(id, u)
    }
    if (!users.has(app.me)) users.set(app.me, { typing: false, self: true })
    list.innerHTML = ''
    const ids = [...users.keys()].sort((a, b) =>
      (users.get(b).self - users.get(a).self) || app.people.nameOf(a).localeCompare(app.people.nameOf(b)))
    for (const id of ids) {
      const u = users.get(id)
      const name = app.people.nameOf(id)
      list.append(el('li', { class: `presence-item${u.typing ? ' typing' : ''}`, 'data-user': id },
        el('span', { class: 'avatar small', style: `background:${colorFor(id)}`, 'aria-hidden': 'true' }, initials(name)),
        el('span', { class: 'author' }, name + (u.self ? ' (you)' : '')),
        u.typing ? el('span', { class: 'typing-label' }, 'typing…') : ''
      ))
    }
    $('presence-count').textContent = String(users.size)
    $('presence-offline').hidden = connected
  }
}
