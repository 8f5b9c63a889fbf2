// The composer: one text box, two destinations. "Ask the AI" sends a prompt the assistant
// answers; "Message the team" posts to the people only (a message starting with @ai goes to
// the AI). Enter sends, Shift+Enter starts a new line, Esc stops your running prompt (or
// clears the box). A Stop button stands by while a prompt of yours waits or runs.
import { $ } from './util.js'

const AI_MENTION = /^@ai\b\s*/i

/** A fresh command id (crypto.randomUUID needs a secure context; this does not). */
const commandId = () => Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('')

export function mountComposer (app) {
  const text = /** @type {HTMLTextAreaElement} */ ($('composer-text'))
  const send = /** @type {HTMLButtonElement} */ ($('send'))
  const stop = /** @type {HTMLButtonElement} */ ($('stop'))
  const modes = { prompt: $('mode-ai'), message: $('mode-team') }
  let mode = 'prompt'
  // One command per intent (review: a double Enter or click posted, and ran, a prompt
  // twice): Send is off while a send waits for its answer, and a text sent again after an
  // unknown outcome (the socket closed first) goes under the same command id, which the
  // server answers once.
  let sending = false
  let attempt = null // { kind, body, id } of the last send not known to be done or refused

  function setMode (next) {
    mode = next
    for (const [name, button] of Object.entries(modes)) {
      button.setAttribute('aria-checked', String(name === mode))
      button.tabIndex = name === mode ? 0 : -1 // one stop for the group; arrows move in it
    }
    update()
  }
  modes.prompt.addEventListener('click', () => setMode('prompt'))
  modes.message.addEventListener('click', () => setMode('message'))
  // A radio group: the arrow keys move between the two.
  for (const button of Object.values(modes)) {
    button.addEventListener('keydown', (event) => {
      if (!['ArrowLeft', 'ArrowRight', 'ArrowUp', 'ArrowDown'].includes(event.key)) return
      event.preventDefault()
      const next = mode === 'prompt' ? 'message' : 'prompt'
      setMode(next)
      modes[next].focus()
    })
  }

  /** What Stop and Esc cancel: my running prompt, else my newest waiting one (review: the
   * newest waiting one went first, and the reply streaming went on), or undefined. */
  function myLivePrompt () {
    const entries = app.session.transcript
    let waiting
    for (let i = entries.length - 1; i >= 0; i--) {
      const e = entries[i]
      if (e.kind !== 'prompt' || e.author !== app.me) continue
      if (e.status === 'running') return e
      if (e.status === 'queued') waiting ??= e
    }
    return waiting
  }

  function kindFor (value) {
    return mode === 'message' && AI_MENTION.test(value) ? 'prompt' : mode
  }

  function update () {
    const connected = app.session.state === 'connected'
    const { canPrompt, canMessage, known } = app.ui
    const allowed = mode === 'prompt' ? canPrompt : canMessage
    send.disabled = !known || !allowed || !connected || sending
    send.setAttribute('aria-busy', String(sending))
    send.textContent = mode === 'prompt' ? 'Ask AI' : 'Send to team'
    modes.prompt.disabled = known && !canPrompt
    modes.message.disabled = known && !canMessage
    if (known && !canPrompt && canMessage && mode === 'prompt') setMode('message')
    text.disabled = known && !canPrompt && !canMessage
    text.placeholder = mode === 'prompt'
      ? 'Ask the AI… (Enter to send, Shift+Enter for a new line)'
      : 'Message the team… (start with @ai to ask the AI)'
    const live = myLivePrompt()
    stop.hidden = !live
    stop.dataset.prompt = live ? live.id : ''
    let note = ''
    if (!known) note = 'Checking what you may do here…'
    else if (!canPrompt && !canMessage) note = 'You can follow this session but not write to it.'
    else if (!canPrompt) note = 'Your role does not allow asking the AI.'
    else if (!connected) note = app.ui.finalClose ? 'Disconnected.' : 'Waiting for the connection…'
    $('composer-note').textContent = note
  }

  async function submit () {
    const value = text.value.trim()
    if (!value || send.disabled) { text.focus(); return }
    const kind = kindFor(value)
    const body = kind === 'prompt' ? value.replace(AI_MENTION, '') || value : value
    const same = attempt !== null && attempt.kind === kind && attempt.body === body
    attempt = { kind, body, id: same ? attempt.id : commandId() }
    const options = { id: attempt.id }
    sending = true
    update()
    let reply
    try {
      reply = await (kind === 'prompt' ? app.api.sendPrompt(body, options) : app.api.sendMessage(body, options))
    } finally {
      sending = false
      update()
    }
    // The server answered (an ack or a refusal): a new send is a new command.
    if (reply.type === 'ack' || (reply.closeCode == null && reply.code !== 'aborted')) attempt = null
    if (reply.type === 'ack' && text.value.trim() === value) text.value = ''
    setTyping(false)
  }

  function stopMine () {
    const live = myLivePrompt()
    if (live) app.api.cancel(live.id)
    return Boolean(live)
  }

  $('composer').addEventListener('submit', (event) => { event.preventDefault(); submit() })
  stop.addEventListener('click', () => { stopMine(); text.focus() })
  text.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault()
      submit()
    } else if (event.key === 'Escape') {
      event.preventDefault()
      if (!stopMine()) text.value = ''
    }
  })

  // typing indicator (awareness)
  let typingTimer = 0
  function setTyping (value) {
    clearTimeout(typingTimer)
    app.session.setTyping(value)
    if (value) typingTimer = setTimeout(() => setTyping(false), 2500)
  }
  text.addEventListener('input', () => setTyping(text.value.length > 0))
  text.addEventListener('blur', () => setTyping(false))

  setMode('prompt')
  return update
}
