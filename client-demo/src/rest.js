// The REST API with the member's client token (the same token the socket uses).

export class RestError extends Error {
  constructor (status, code, message) {
    super(message)
    this.status = status
    this.code = code
  }
}

/** `call(method, path, body?)` → the parsed JSON answer (null for 204), or a RestError. */
export function restClient (token) {
  return async function call (method, path, body) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {}
    const init = { method, headers }
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json'
      init.body = JSON.stringify(body)
    }
    let response
    try {
      response = await fetch(path, init)
    } catch (error) {
      throw new RestError(0, 'unavailable', `the server cannot be reached (${error})`)
    }
    if (response.status === 204) return null
    let answer = null
    try { answer = await response.json() } catch { answer = null }
    if (!response.ok) {
      const error = answer?.error || {}
      throw new RestError(response.status, error.code || 'error', error.message || `HTTP ${response.status}`)
    }
    return answer
  }
}

export const sessionPath = (sessionId, rest = '') =>
  `/api/v1/sessions/${encodeURIComponent(sessionId)}${rest}`
