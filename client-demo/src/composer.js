// The composer: the text box and its buttons.
import { $ } from './util.js'

export function mountComposer (app) {
  const text = /** @type {HTMLTextAreaElement} */ ($('composer-text'))
  const promptBtn = /** @type {HTMLButtonElement} */ ($('send-prompt'))
  const messageBtn = /** @type {HTMLButtonElement} */ ($('send-message'))

  function update () {
    const connected = app.session.state === 'connected'
    const { canPrompt, canMessage, known } = app.ui
    promptBtn.disabled = !known || !canPrompt || !connected
    messageBtn.disabled = !known || !canMessage || !connected
    text.disabled = known && !canPrompt && !canMessage
    let note = ''
    if (!known) note = 'Checking what you may do here…'
    else if (!canPrompt && !canMessage) note = 'You can follow this session but not write to it.'
    else if (!canPrompt) note = 'Your role does not allow asking the assistant.'
    else if (!connected) note = app.ui.finalClose ? 'Disconnected.' : 'Waiting for the connection…'
    $('composer-note').textContent = note
  }

  async function submit (kind) {
    const value = text.value.trim()
    if (!value) { text.focus(); return }
    const reply = await (kind === 'prompt' ? app.api.sendPrompt(value) : app.api.sendMessage(value))
    if (reply.type === 'ack' && text.value.trim() === value) text.value = ''
    setTyping(false)
  }
  $('composer').addEventListener('submit', (event) => { event.preventDefault(); submit('prompt') })
  messageBtn.addEventListener('click', () => submit('message'))
  text.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault()
      if (!promptBtn.disabled) submit('prompt')
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

  return update
}
