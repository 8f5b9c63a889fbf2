// The "Session" panel: your display name, the model (owners choose), the scheduling policy
// (owners), and invite links (who manages members).
import { sessionPath } from './rest.js'
import { $, el, setText } from './util.js'

export function mountSettings (app) {
  const policySel = /** @type {HTMLSelectElement} */ ($('policy'))
  const modelSel = /** @type {HTMLSelectElement} */ ($('model'))
  const nameInput = /** @type {HTMLInputElement} */ ($('my-name'))
  let models = null
  let current = null // the session's model (null: the server's default)

  policySel.addEventListener('change', async () => {
    const reply = await app.api.setPolicy(policySel.value)
    if (reply.type !== 'ack') policySel.value = app.session.policy || 'queue'
  })

  async function loadModels () {
    try {
      const [list, session] = await Promise.all([
        app.rest('GET', '/api/v1/models'),
        app.rest('GET', sessionPath(app.sessionId))
      ])
      models = list.models
      current = session.model
    } catch (error) {
      setText($('model-note'), `Models unavailable: ${error.message}`)
      return
    }
    modelSel.innerHTML = ''
    for (const m of models) {
      const label = `${m.name}${m.default ? ' (default)' : ''}`
      modelSel.append(el('option', { value: m.name }, label))
    }
    const fallback = models.find((m) => m.default)?.name ?? ''
    modelSel.value = current ?? fallback
    render()
  }

  modelSel.addEventListener('change', async () => {
    try {
      const session = await app.rest('PATCH', sessionPath(app.sessionId), { model: modelSel.value })
      current = session.model
      setText($('model-note'), 'Model changed: the next reply uses it.')
    } catch (error) {
      app.showError(error.code, error.message, 'model')
      modelSel.value = current ?? models?.find((m) => m.default)?.name ?? ''
    }
  })

  $('name-form').addEventListener('submit', async (event) => {
    event.preventDefault()
    try {
      const me = await app.rest('PATCH', sessionPath(app.sessionId, '/me'), { display_name: nameInput.value.trim() })
      app.people.set(app.me, me.display_name)
      setText($('name-note'), 'Saved: the others see it now.')
    } catch (error) {
      setText($('name-note'), error.message)
    }
  })

  $('invite-form').addEventListener('submit', async (event) => {
    event.preventDefault()
    const user = /** @type {HTMLSelectElement} */ ($('invite-user')).value
    try {
      const invite = await app.rest('POST', sessionPath(app.sessionId, '/invites'), { user_id: user })
      const link = new URL(invite.link, location.origin).href
      const out = /** @type {HTMLInputElement} */ ($('invite-link'))
      out.value = link
      out.hidden = false
      out.select()
      setText($('invite-note'), `Works once, for ${app.people.nameOf(user)}, until ${new Date(invite.expires_at * 1000).toLocaleString()}.`)
    } catch (error) {
      setText($('invite-note'), error.message)
    }
  })

  let filledName = false
  let listed = '' // the members the invite list shows, with their names
  function render () {
    const caps = app.ui.capabilities
    policySel.disabled = !caps.has('manage_session')
    modelSel.disabled = !caps.has('manage_session') || !models
    const policy = app.session.policy
    if (policy && document.activeElement !== policySel) policySel.value = policy
    if (app.ui.known && !filledName) {
      filledName = true
      nameInput.value = app.ui.displayName || ''
    }
    $('invite-section').hidden = !caps.has('manage_members')
    const userSel = $('invite-user')
    const members = app.members.map((m) => [m.user_id, app.people.nameOf(m.user_id)])
    if (caps.has('manage_members') && JSON.stringify(members) !== listed) {
      listed = JSON.stringify(members)
      const chosen = userSel.value
      userSel.innerHTML = ''
      for (const [id, name] of members) userSel.append(el('option', { value: id }, name))
      if (members.some(([id]) => id === chosen)) userSel.value = chosen
    }
  }

  loadModels()
  return render
}
