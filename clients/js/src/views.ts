/** Read-only, typed snapshots of the shared document's roots, rebuilt only where it changed. */

import * as Y from 'yjs'
import type { Awareness } from 'y-protocols/awareness'
import type { Entry, Peer, QueueItem } from './types.js'

const plain = (value: unknown): unknown =>
  value instanceof Y.AbstractType ? value.toJSON() : value

const entryOf = (map: Y.Map<unknown>): Entry => {
  const entry: Record<string, unknown> = {}
  for (const [key, value] of map.entries()) entry[key] = plain(value)
  if (typeof entry['content'] !== 'string') entry['content'] = ''
  return Object.freeze(entry) as unknown as Entry
}

/**
 * The transcript as an array of frozen entries. An entry is converted again only when
 * something inside it changed (a streaming reply costs one entry per update, not the whole
 * transcript).
 */
export class TranscriptView {
  private readonly cache = new WeakMap<Y.Map<unknown>, Entry>()
  private snapshot: readonly Entry[] | null = null

  constructor (private readonly array: Y.Array<unknown>) {}

  /** Forget what `events` (of `array.observeDeep`) changed. */
  invalidate (events: ReadonlyArray<Y.YEvent<any>>): void {
    this.snapshot = null
    for (const event of events) {
      const index = event.path[0]
      if (typeof index !== 'number') continue
      const map = this.array.get(index)
      if (map instanceof Y.Map) this.cache.delete(map)
    }
  }

  get entries (): readonly Entry[] {
    if (this.snapshot === null) {
      const entries: Entry[] = []
      for (const item of this.array.toArray()) {
        if (!(item instanceof Y.Map)) continue
        let entry = this.cache.get(item)
        if (entry === undefined) {
          entry = entryOf(item)
          this.cache.set(item, entry)
        }
        entries.push(entry)
      }
      this.snapshot = Object.freeze(entries)
    }
    return this.snapshot
  }
}

export const queueOf = (array: Y.Array<unknown>): readonly QueueItem[] =>
  Object.freeze(
    array
      .toArray()
      .filter((item): item is Y.Map<unknown> => item instanceof Y.Map)
      .map((item, index) =>
        Object.freeze({
          id: String(item.get('id')),
          seq: Number(item.get('seq')),
          author: String(item.get('author')),
          position: index + 1
        })
      )
  )

const record = (value: unknown): Record<string, unknown> =>
  typeof value === 'object' && value !== null ? (value as Record<string, unknown>) : {}

export const peersOf = (awareness: Awareness): readonly Peer[] => {
  const peers: Peer[] = []
  awareness.getStates().forEach((state, clientId) => {
    const stamp = record(state['parley'])
    const user = record(state['user'])
    peers.push(
      Object.freeze({
        clientId,
        userId: typeof stamp['user_id'] === 'string' ? stamp['user_id'] : null,
        displayName: typeof stamp['display_name'] === 'string' ? stamp['display_name'] : null,
        name: typeof user['name'] === 'string' ? user['name'] : null,
        typing: state['typing'] === true,
        self: clientId === awareness.clientID
      })
    )
  })
  return Object.freeze(peers)
}
