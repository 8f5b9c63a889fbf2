// The transcript: one row per entry, kept by id and updated in place as replies stream.
import { $, colorFor, el, initials, renderKeyed, setText } from './util.js'

export function mountTranscript (app) {
  const list = $('transcript')
  const rows = new Map() // entry id -> <li>

  function make () {
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

  function fill (row, entry) {
    const kind = entry.kind || ''
    const author = String(entry.author ?? '')
    const status = entry.status || ''
    const mine = author === app.me && kind !== 'reply'
    row.className = `entry kind-${kind} is-${status}${mine ? ' mine' : ''}`
    row.dataset.id = String(entry.id)
    row.dataset.kind = kind
    row.dataset.status = status
    row.dataset.author = author
    const name = app.people.nameOf(author)
    const avatar = row.querySelector('.avatar')
    setText(avatar, initials(name))
    avatar.style.background = colorFor(author)
    setText(row.querySelector('.author'), name + (mine ? ' (you)' : ''))
    setText(row.querySelector('.kind'), kind === 'reply' ? 'assistant' : kind)
    const st = row.querySelector('.status')
    setText(st, status)
    st.className = `status status-${status}`
    setText(row.querySelector('.seq'), entry.seq != null ? `#${entry.seq}` : '')
    setText(row.querySelector('.time'), entry.created_at ? new Date(Number(entry.created_at)).toLocaleTimeString() : '')
    const c = row.querySelector('.content')
    setText(c, entry.content)
    c.classList.toggle('streaming', status === 'streaming')
    setText(row.querySelector('.reason'), entry.reason || '')
    const head = row.querySelector('.entry-head')
    let btn = head.querySelector('button.cancel')
    const cancellable = kind === 'prompt' && (status === 'queued' || status === 'running') && app.ui.mayCancel(author)
    if (cancellable && !btn) {
      btn = el('button', { type: 'button', class: 'cancel small secondary' }, 'Cancel')
      btn.addEventListener('click', () => app.api.cancel(row.dataset.id))
      head.append(btn)
    } else if (!cancellable && btn) {
      btn.remove()
    }
    if (btn) btn.setAttribute('aria-label', `Cancel prompt #${entry.seq ?? ''} by ${name}`)
  }

  return function render () {
    const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 60
    const entries = app.session.transcript
    renderKeyed(list, rows, entries, (e) => String(e.id), make, fill)
    $('transcript-empty').hidden = entries.length > 0
    if (stick) list.scrollTop = list.scrollHeight
  }
}
