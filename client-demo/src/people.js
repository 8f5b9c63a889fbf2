// Who is who: user ids to display names, as the server holds them now. Set from the member
// list (REST: at start and after each reconnect) and from the server's `member` frames (a
// member joined, left, or was renamed) in between: a name given up is forgotten at once, so
// nobody shows under a name another member holds now (review), and a member without one
// shows as their user id.

export function peopleDirectory () {
  let names = new Map()
  let changed = () => {}
  return {
    /** Take one member's name as the server holds it ('' or null: none); notifies once
     * per real change. */
    set (userId, displayName) {
      const before = names.get(userId)
      if (displayName) names.set(userId, displayName)
      else names.delete(userId)
      if (names.get(userId) !== before) changed()
    },
    /** Take the whole member list: the names of who is not in it are forgotten. */
    setAll (members) {
      const next = new Map(members.filter((m) => m.display_name).map((m) => [m.user_id, m.display_name]))
      const same = next.size === names.size && [...next].every(([id, name]) => names.get(id) === name)
      names = next
      if (!same) changed()
    },
    nameOf (userId) {
      return names.get(userId) || String(userId ?? '')
    },
    onChange (fn) { changed = fn }
  }
}
