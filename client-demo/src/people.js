// Who is who: user ids to display names, from the member list (REST) and presence.

export function peopleDirectory () {
  const names = new Map()
  let changed = () => {}
  return {
    /** Take a display name (ignored when empty); notifies once per real change. */
    learn (userId, displayName) {
      if (!displayName || names.get(userId) === displayName) return
      names.set(userId, displayName)
      changed()
    },
    nameOf (userId) {
      return names.get(userId) || String(userId ?? '')
    },
    onChange (fn) { changed = fn }
  }
}
